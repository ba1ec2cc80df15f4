"""Test-session settings: one torch thread (2-core machines; threads only fight), quiet tools."""

import torch

from advreid.settings import quiet_tools

quiet_tools()
torch.set_num_threads(1)
