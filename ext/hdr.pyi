"""Type stub of the compiled module ``tickwire.ext.hdr`` (ext/hdr.pyx): partial, every name Any.

The package ships ``py.typed``; without a stub beside it a type checker finds no module at all
(mypy: import-not-found). The signatures are in the module's docstrings and docs/*.md.
"""

from typing import Any

def __getattr__(name: str) -> Any: ...
