"""Development and demo wiring: the embedded store launcher, the seed, the demo simulators."""
