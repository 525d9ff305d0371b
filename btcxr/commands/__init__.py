"""One module per CLI subcommand.

Each module defines `register(subparsers)`, which adds its parser and sets `func` to a function of the
parsed arguments. Modules import heavy libraries (torch, pandas) inside that function only, so that
`btcxr --help` stays instant.
"""
