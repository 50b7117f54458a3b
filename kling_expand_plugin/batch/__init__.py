"""The batch runtime: one paid piece of work done exactly once.

The task runner, the ledger, account slots, the callback receiver, the window of items in
flight and the progress line.
"""
