"""Helpers the tests share. Test modules import from here (and from tools/, which the soak tool
shares), never from one another: each test module stands alone."""
