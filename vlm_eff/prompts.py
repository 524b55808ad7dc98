"""Zero-shot prompts: templates, and class names when the prompt set has them (the `prompts` config group).

A prompt set is written inline in its config (`templates`, optionally `classes`), names a set shipped in
`vlm_eff/prompt_sets/` (`registry: imagenet`, `cifar100`), or is read from a file (`path`): JSON with
`templates` (and optionally `classes`, `wnids`), or plain text with one template per line. A template
holds one `{}` (or CLIP_benchmark's `{c}`) where the class name goes.

Class names come from the prompt set when it has them, else from the data (`Prompts.names_for`). A set
with WordNet ids (ImageNet) names any wnid-folder data, the 1,000 classes or a subset of them
(ImageNet-R / -A: 200), by id; other sets must have as many classes as the data.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from vlm_eff.errors import ConfigError

REGISTRY = Path(__file__).parent / "prompt_sets"
WNID = re.compile(r"n\d{8}")


@dataclass(frozen=True)
class Prompts:
    templates: list[str]
    classes: list[str] | None = None  # None: names from the data
    wnids: list[str] | None = None  # WordNet ids, one per class (ImageNet)

    def names_for(self, found: list[str]) -> list[str]:
        """The class names of data whose classes (folder names, in label order) are `found`: WordNet ids,
        or class indices (ImageNet-V2's folders 0..999), name a prompt set with wnids by id or index."""
        if self.wnids and found and all(name.isdigit() for name in found):
            if max(int(name) for name in found) >= len(self.classes):
                raise ConfigError(f"class folders are numbered up to {max(int(n) for n in found)}, but the prompt set "
                                  f"has {len(self.classes)} classes")
            return [self.classes[int(name)] for name in found]
        if self.wnids and found and all(WNID.fullmatch(name) for name in found):
            by_wnid = dict(zip(self.wnids, self.classes))
            unknown = [name for name in found if name not in by_wnid]
            if unknown:
                raise ConfigError(f"class folders {', '.join(unknown[:3])} are not among the prompt set's "
                                  f"{len(self.wnids)} WordNet ids")
            return [by_wnid[name] for name in found]
        if found and all(WNID.fullmatch(name) for name in found):
            raise ConfigError(f"the data's classes are WordNet ids ({found[0]}, ...) and these prompts cannot name "
                              "them; use prompts=imagenet (or a prompts file with 'wnids')")
        if found and all(name.isdigit() for name in found):
            raise ConfigError(f"the data's class folders are numbers ({found[0]}, ...) and these prompts cannot name "
                              "them; use a prompt set with class names in that order (prompts=imagenet for ImageNet-V2)")
        if self.classes is None:
            return found
        if len(self.classes) != len(found):
            raise ConfigError(f"the prompt set has {len(self.classes)} class names but the data has {len(found)} "
                              f"classes ({', '.join(found[:3])}, ...); choose prompts that match the data")
        spelled = {normalised(name): name for name in self.classes}
        if spelled.keys() == {normalised(name) for name in found}:  # the same classes: matched by name, not place
            return [spelled[normalised(name)] for name in found]
        return list(self.classes)  # other words for the data's classes, in the data's order


def normalised(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def _checked_templates(templates, source: str) -> list[str]:
    if not templates or isinstance(templates, str):
        raise ConfigError(f"{source}: templates must be a non-empty list of strings")
    checked = []
    for template in templates:
        template = str(template).replace("{c}", "{}")
        if template.count("{}") != 1 or re.search(r"\{[^}]", template):
            raise ConfigError(f"{source}: template {template!r} must hold exactly one '{{}}' for the class name")
        checked.append(template)
    return checked


def _from_mapping(data: dict, source: str) -> Prompts:
    classes, wnids = data.get("classes"), data.get("wnids")
    if classes is not None and (isinstance(classes, str) or not all(isinstance(c, str) for c in classes) or not classes):
        raise ConfigError(f"{source}: classes must be a non-empty list of names")
    if wnids is not None and (classes is None or len(wnids) != len(classes)):
        raise ConfigError(f"{source}: wnids need one class name each ({len(wnids)} wnids, "
                          f"{len(classes or [])} classes)")
    return Prompts(_checked_templates(data.get("templates"), source), list(classes) if classes else None,
                   list(wnids) if wnids else None)


def read_prompt_file(path: str | Path) -> Prompts:
    """A JSON prompt set ({"templates": [...], "classes": [...]}) or a text file of templates, one per line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"prompts.path={path} is not a file; give a JSON prompt set or a text file of templates")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"prompts.path={path} is not valid JSON: {error}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"prompts.path={path} must hold a JSON object with 'templates' (and 'classes')")
        return _from_mapping(data, f"prompts.path={path}")
    return Prompts(_checked_templates([line.strip() for line in text.splitlines() if line.strip()],
                                      f"prompts.path={path}"))


def load_prompts(cfg: DictConfig | dict) -> Prompts:
    """The `prompts` config as a `Prompts`: a registry set, a file, or inline templates and classes."""
    if cfg.get("registry"):
        path = REGISTRY / f"{cfg['registry']}.json"
        if not path.is_file():
            known = sorted(p.stem for p in REGISTRY.glob("*.json"))
            raise ConfigError(f"prompts.registry={cfg['registry']!r} is unknown; allowed: {', '.join(known)}")
        return read_prompt_file(path)
    if cfg.get("path"):
        return read_prompt_file(cfg["path"])
    if not cfg.get("templates"):
        raise ConfigError(f"prompts={cfg.get('name', '')} needs prompts.path=<a JSON prompt set or a text file of "
                          "templates, one per line>")
    return _from_mapping({"templates": cfg.get("templates"), "classes": cfg.get("classes")}, "prompts")
