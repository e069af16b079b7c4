"""huatuo: offline HuatuoGPT-Vision for radiology workstations.

The runtime package. It must stay importable on a workstation that has no torch, no
transformers and no `huatuo_convert`: heavy imports happen inside the functions that need them.
"""

__version__ = "0.1.0"
#: the name of huatuo's folders in the platform's config, data and cache directories
APP_NAME = "huatuo"

# Before any engine library is imported: ONNX Runtime reads its telemetry switch at import.
from huatuo_cli.offline import disable_telemetry as _disable_telemetry  # noqa: E402

_disable_telemetry()
