# The cffi extension built from csrc/ (see _build.py): its objects are dynamic.
from typing import Any

ffi: Any
lib: Any
