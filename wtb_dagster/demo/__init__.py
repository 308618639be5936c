"""Offline Northwind Gadgets demo workflow for the Workflow Test Bench."""
