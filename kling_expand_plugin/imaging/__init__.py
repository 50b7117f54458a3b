"""Pure functions of pixels and numbers.

Decoding inputs (guarded), the target and the plan of the calls, fitting an input into the
API's limits, geometry, the local fill, stitching results back and encoding them.
"""
