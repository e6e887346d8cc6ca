"""Official checkpoints and option files: safe reading, architecture detection, import to ready folders.

- checkpoints  read_official (tensors only), extract_state_dict (wrappers, prefixes), load_official (strict)
- detection    detect_architecture(state_dict) -> .name, .kwargs, .undetermined (from keys and shapes)
- options      read_options(path) -> OfficialOptions (IR-SDE and BasicSR option files), check_against
- importer     import_official(out, weights=..., options=...) -> a ready folder with a model card
- export       export_official(network, path) -> the official checkpoint of a refusion network (the inverse)
"""
from refusion.official.checkpoints import load_official, read_official
from refusion.official.detection import detect_architecture
from refusion.official.export import export_official
from refusion.official.importer import import_official
from refusion.official.options import check_against, read_options

__all__ = ["load_official", "read_official", "detect_architecture", "read_options", "check_against",
           "import_official", "export_official"]
