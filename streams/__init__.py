"""rpcache stream processing: the Faust app, reducers, sinks, CLI and stack."""
