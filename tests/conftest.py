"""Settings every test shares."""

from hypothesis import settings

# Hypothesis fails an example that takes longer than 200 ms by default: a
# wall-clock limit, which on a shared 2-core machine fails for reasons that are
# not the code's (it did once in the unit suite). Speed is for `rpcache bench`.
settings.register_profile("rpcache", deadline=None, print_blob=True)
settings.load_profile("rpcache")
