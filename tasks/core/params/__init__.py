"""The params sections: one module per section of params.yaml (``flows/params.py`` composes them into ``Params``).

Pydantic models, frozen, unknown keys refused (``base.Section``). They import no torch and no MONAI: the CLI
validates a params file in well under a second.
"""
