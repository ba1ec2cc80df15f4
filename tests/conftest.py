"""Test-session settings: one torch thread (2-core machines; threads only fight), quiet tools."""

import torch

from advreid.settings import quiet_tools

quiet_tools()
torch.set_num_threads(1)

# DVC binds its log handlers to sys.stdout/sys.stderr when first imported; importing it here binds them to
# pytest's session-wide streams rather than to a test's capsys streams, which are closed after that test.
import dvc  # noqa: E402, F401
