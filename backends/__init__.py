"""Backend adapters. Each module implements one kind of `backends.base.Backend`."""
