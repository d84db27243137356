"""Scorecard YAML files shipped with vitals (package data; ``default.yaml``)."""
