"""Real external parts (a Ralph LRS) started by the test suite."""
