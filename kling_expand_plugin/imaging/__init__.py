"""Pure functions of pixels and numbers.

Geometry, planning, fitting an input into the API's limits, the local fill, stitching results
back and encoding them.
"""
