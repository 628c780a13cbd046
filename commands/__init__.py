"""The commands of `actwh`, one module per kind: ingesting, reading, describing and maintaining a
warehouse. cli.py gathers them into the command group."""
