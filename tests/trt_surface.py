"""The real Python API surface of several TensorRT versions, extracted from NVIDIA's binding wheels, and of
the installed TensorRT-RTX.

TensorRT itself needs a GPU and NVIDIA's package index, but PyPI carries the small ``tensorrt*-bindings``
wheels: the pybind11 module alone, linked against libnvinfer / libnvinfer_plugin / libnvonnxparser
(and libnvparsers for 8.6). Importing it only needs those sonames to exist and to export the handful of
factory functions the module references, so we build stub libraries (every factory returns nullptr) and
preload them. Every class, enum member and pybind11 docstring is then the real one; only constructing a
Builder/Runtime fails (the factory returned nullptr), which is what :mod:`trt_fake` is for.

``surface(version)`` downloads the wheel, builds the stubs, dumps the module in a subprocess (one TensorRT
per process: the sonames clash) and caches everything under ``$EFFEDGE_TEST_CACHE`` or
``~/.cache/effedge-tests/trt/<version>/``.

TensorRT-RTX ships its libraries on PyPI and imports without a GPU, so ``installed_surface()`` describes the
installed ``tensorrt_rtx`` as it is (no wheel, no stubs), in a subprocess too, once per test session.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

TRT_VERSIONS = ("8.6.1", "10.3.0", "10.13.3.9", "11.4.0.106")
WHEELS = {
    "8.6.1": "tensorrt-bindings",
    "10.3.0": "tensorrt-cu12-bindings",
    "10.13.3.9": "tensorrt-cu12-bindings",
    "11.4.0.106": "tensorrt-cu13-bindings",
}
# Cached surfaces are reused only if written by this very file: any change to the extractor rebuilds them.
EXTRACTOR_ID = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


@dataclass(frozen=True)
class Flavour:
    """Where one TensorRT product keeps its bindings, and the module name code imports them by."""

    package: str  # the bindings package (its __init__ re-exports the extension and adds Python helpers)
    extension: str  # the pybind11 extension module inside it
    module: str  # the public module (``import tensorrt``); the surface names classes ``<module>.Builder``

    @property
    def bindings_prefix(self) -> str:
        return f"{self.package}.{self.extension}."


TENSORRT = Flavour(package="tensorrt_bindings", extension="tensorrt", module="tensorrt")
TENSORRT_RTX = Flavour(package="tensorrt_rtx_bindings", extension="tensorrt_rtx", module="tensorrt_rtx")
FLAVOURS = {flavour.module: flavour for flavour in (TENSORRT, TENSORRT_RTX)}
BINDINGS_PACKAGE = TENSORRT.package

# The C symbols tensorrt.so references (checked with `nm -D --undefined-only` on all four wheels; 8.6 has no
# createNvOnnxParserRefitter_INTERNAL but an extra symbol is harmless). Factories return nullptr, which the
# bindings turn into a TypeError from the constructor. Argument lists do not matter for the C ABI.
_STUB_SOURCES = {
    "nvinfer": """
extern "C" {
void* createInferBuilder_INTERNAL(void*, int) { return nullptr; }
void* createInferRuntime_INTERNAL(void*, int) { return nullptr; }
void* createInferRefitter_INTERNAL(void*, void*, int) { return nullptr; }
void* getPluginRegistry() { return nullptr; }
void* getBuilderPluginRegistry(int) { return nullptr; }
}
""",
    "nvinfer_plugin": """
extern "C" bool initLibNvInferPlugins(void*, const char*) { return false; }
""",
    "nvonnxparser": """
extern "C" {
void* createNvOnnxParser_INTERNAL(void*, void*, int) { return nullptr; }
void* createNvOnnxParserRefitter_INTERNAL(void*, void*, int) { return nullptr; }
int getNvOnnxParserVersion() { return 0; }
}
""",
    # 8.6 only: the UFF/Caffe parsers, referenced by C++ mangled name (return types are not mangled, the
    # FieldMap constructor's parameter types are, so they must match exactly).
    "nvparsers": """
#include <cstdint>
namespace nvuffparser {
class IUffParser;
enum class FieldType : int32_t {};
IUffParser* createUffParser() { return nullptr; }
class FieldMap {
public:
    FieldMap(const char* name, const void* data, FieldType type, int32_t length);
    const char* name; const void* data; FieldType type; int32_t length;
};
FieldMap::FieldMap(const char* n, const void* d, FieldType t, int32_t l) : name(n), data(d), type(t), length(l) {}
}
namespace nvcaffeparser1 {
class ICaffeParser;
ICaffeParser* createCaffeParser() { return nullptr; }
void shutdownProtobufLibrary() {}
}
""",
}
_STUB_LIBRARIES = {8: ("nvinfer", "nvinfer_plugin", "nvonnxparser", "nvparsers"),
                   10: ("nvinfer", "nvinfer_plugin", "nvonnxparser"),
                   11: ("nvinfer", "nvinfer_plugin", "nvonnxparser")}

# pip output meaning the index could not be reached (or held nothing installable for this interpreter).
_UNREACHABLE_MARKERS = ("from versions: none", "NewConnectionError", "Max retries exceeded", "ConnectionError",
                        "Temporary failure in name resolution", "Could not fetch URL", "ProxyError",
                        "Network is unreachable", "timed out")


class WheelsUnavailable(RuntimeError):
    """The binding wheel could not be downloaded (no network / index unreachable): tests skip on this."""


class NotInstalled(RuntimeError):
    """The product described from its installation is not installed here: tests skip on this."""


def cache_root() -> Path:
    env = os.environ.get("EFFEDGE_TEST_CACHE")
    return (Path(env) if env else Path.home() / ".cache" / "effedge-tests") / "trt"


def surface(version: str) -> dict:
    """The API surface of TensorRT ``version`` as a JSON-able dict (see ``_describe_module`` for the layout)."""
    if version not in WHEELS:
        raise ValueError(f"unknown TensorRT version {version!r}; known: {', '.join(TRT_VERSIONS)}")
    root = cache_root() / version
    path = root / "surface.json"
    if path.is_file():
        cached = json.loads(path.read_text())
        if cached.get("extractor") == EXTRACTOR_ID:
            return cached
    site = _unpacked_wheel(version, root)
    stubs = _stub_libraries(int(version.split(".")[0]), root)
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        out = Path(tmp) / "surface.json"
        env = dict(os.environ, LD_BIND_NOW="1")  # a symbol missing from the stubs fails the import, not later
        # -I -S: no user/site packages, so a real tensorrt_libs wheel cannot be picked up instead of the stubs.
        proc = subprocess.run([sys.executable, "-I", "-S", __file__, TENSORRT.module, str(site), str(out),
                               *map(str, stubs)],
                              capture_output=True, text=True, env=env, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"extracting the TensorRT {version} surface failed (exit {proc.returncode}):\n"
                               f"{proc.stdout}{proc.stderr}")
        data = json.loads(out.read_text())
        if data["version"] != version:
            raise RuntimeError(f"the {WHEELS[version]}=={version} wheel reports __version__ {data['version']}")
        os.replace(out, path)
    return data


def installed_surface(flavour: Flavour = TENSORRT_RTX) -> dict:
    """The API surface of the installed ``flavour.module`` (not cached on disk: a reinstall must show)."""
    import importlib.util

    if importlib.util.find_spec(flavour.package) is None:
        raise NotInstalled(f"{flavour.module} is not installed (its bindings package {flavour.package} is missing)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "surface.json"
        # -I: the virtual environment's packages, not the user's site or PYTHONPATH.
        proc = subprocess.run([sys.executable, "-I", __file__, flavour.module, "-", str(out)], capture_output=True,
                              text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"describing the installed {flavour.module} failed (exit {proc.returncode}):\n"
                               f"{proc.stdout}{proc.stderr}")
        return json.loads(out.read_text())


def _python_tag() -> str:
    return f"cp{sys.version_info.major}{sys.version_info.minor}"


def _unpacked_wheel(version: str, root: Path) -> Path:
    """Directory holding the ``tensorrt_bindings`` package of the wheel for this interpreter."""
    site = root / f"site-{_python_tag()}"
    if (site / BINDINGS_PACKAGE / "__init__.py").is_file():
        return site
    wheel = _download(version, root / f"wheel-{_python_tag()}")
    tmp = _staging_dir(root)
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(tmp, [n for n in archive.namelist() if n.startswith(f"{BINDINGS_PACKAGE}/")])
    if not (tmp / BINDINGS_PACKAGE / "tensorrt.so").is_file():
        raise RuntimeError(f"{wheel.name} has no {BINDINGS_PACKAGE}/tensorrt.so")
    _move_into_place(tmp, site)
    return site


def _download(version: str, dest: Path) -> Path:
    name = WHEELS[version]
    wheels = sorted(dest.glob("*.whl"))
    if wheels:
        return wheels[0]
    dest.mkdir(parents=True, exist_ok=True)
    # No --platform/--python-version: the wheel must match the interpreter that will import it.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--retries", "1",
           "--timeout", "30", "--disable-pip-version-check", "-d", str(dest), f"{name}=={version}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode == 0 and wheels:
        return wheels[0]
    errors = [line.strip() for line in output.splitlines() if "ERROR" in line or "Error" in line]
    reason = errors[-1] if errors else output.strip()[-300:]
    if any(marker in output for marker in _UNREACHABLE_MARKERS):
        raise WheelsUnavailable(f"pip download {name}=={version} for {_python_tag()}: {reason}")
    raise RuntimeError(f"pip download {name}=={version} failed (exit {proc.returncode}):\n{output}")


def _stub_libraries(major: int, root: Path) -> list[Path]:
    """Build (once) the stub sonames TensorRT ``major``'s bindings link against; returns their paths."""
    names = _STUB_LIBRARIES[major]
    digest = hashlib.sha256(repr([(n, _STUB_SOURCES[n]) for n in names]).encode()).hexdigest()[:12]
    out = root / f"stubs-{digest}"
    libs = [out / f"lib{name}.so.{major}" for name in names]
    if all(lib.is_file() for lib in libs):
        return libs
    tmp = _staging_dir(root)
    for name in names:
        source = tmp / f"{name}.cpp"
        source.write_text(_STUB_SOURCES[name])
        soname = f"lib{name}.so.{major}"
        cmd = ["g++", "-shared", "-fPIC", "-O1", f"-Wl,-soname,{soname}", "-o", str(tmp / soname), str(source)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"building the stub {soname} failed:\n{' '.join(cmd)}\n{proc.stderr}")
    _move_into_place(tmp, out)
    return libs


def _staging_dir(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=root))


def _move_into_place(staging: Path, target: Path) -> None:
    """Publish a finished staging folder; another process may have published the same content first."""
    try:
        staging.rename(target)
    except OSError:
        shutil.rmtree(staging)


# ---------------------------------------------------------------------------------------------------------
# Extractor: runs in the subprocess (stdlib only), with the stubs preloaded and the bindings imported.
# ---------------------------------------------------------------------------------------------------------

_CPP_NAME = re.compile(r"\b(?:nvinfer1|nvonnxparser)::((?:\w+::)*\w+)")
# C++ interface names the bindings expose under another Python name (IBuilder -> Builder is covered by
# dropping the leading "I"; these are not).
_CPP_RENAMES = {"IParser": "OnnxParser", "IParserRefitter": "OnnxParserRefitter"}
_PARAM_KINDS = {"POSITIONAL_ONLY": "positional_only", "POSITIONAL_OR_KEYWORD": "positional_or_keyword",
                "VAR_POSITIONAL": "var_positional", "KEYWORD_ONLY": "keyword_only", "VAR_KEYWORD": "var_keyword"}


@dataclass(frozen=True)
class Names:
    """What annotations are resolved against: the keys of the module's classes, and its flavour."""

    classes: frozenset
    flavour: Flavour


def _resolve_cpp(name: str, classes: frozenset) -> Optional[str]:
    dotted = name.replace("::", ".")
    leaf = dotted.rsplit(".", 1)[-1]
    # nvinfer1::v_1_0::IErrorRecorder -> IErrorRecorder; ILogger::Severity -> ILogger.Severity
    for candidate in (dotted, leaf, _CPP_RENAMES.get(leaf), leaf[1:] if leaf.startswith("I") else None):
        if candidate in classes:
            return candidate
    return None


def normalize_type(text: str, names: Names) -> str:
    """Annotation text with ``tensorrt_bindings.tensorrt.X`` shortened to ``tensorrt.X`` (``tensorrt_rtx.X`` for
    TensorRT-RTX), and C++ names the docstring generator left unresolved (``nvinfer1::TensorIOMode``) mapped to
    their Python class."""
    module = names.flavour.module
    text = text.strip().replace(names.flavour.bindings_prefix, f"{module}.")

    def cpp(match: re.Match) -> str:
        resolved = _resolve_cpp(match.group(1), names.classes)
        return f"{module}.{resolved}" if resolved else match.group(0)

    return _CPP_NAME.sub(cpp, text)


def _brackets(text: str, start: int = 0):
    """Yield (index, char, depth after it) outside quotes; "->" is an arrow, not a closing bracket."""
    depth, quote = 0, None
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            quote = None if ch == quote else quote
            continue
        if ch in "'\"":
            quote = ch
            continue
        if ch in "([{<":
            depth += 1
        elif ch in ")]}>" and not (ch == ">" and text[i - 1:i] == "-"):
            depth -= 1
        yield i, ch, depth


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split at ``sep`` outside brackets (``[](){}<>``) and quotes; parts are stripped, empty ones dropped."""
    parts, start = [], 0
    for i, ch, depth in _brackets(text):
        if depth == 0 and ch not in "([{<)]}>" and text.startswith(sep, i) and i >= start:
            parts.append(text[start:i])
            start = i + len(sep)
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _matching_paren(text: str, open_index: int) -> int:
    for i, ch, depth in _brackets(text, open_index):
        if depth == 0 and ch in ")]}>":
            return i
    raise ValueError(f"unbalanced signature: {text!r}")


def parse_signature(line: str, names: Names, drop_self: bool) -> dict:
    """One pybind11 signature line ``name(a: T, b: U = d) -> R`` as
    ``{"name", "text", "params": [{"name", "kind", "type", "default", "has_default"}], "returns"}``
    (``text`` is the line without ``self``, with types normalized)."""
    line = re.sub(r"^\d+\.\s+", "", line.strip())
    start = line.index("(")
    end = _matching_paren(line, start)
    rest = line[end + 1:].strip()
    returns = normalize_type(rest[2:], names) if rest.startswith("->") else None
    params, keyword_only = [], False
    for part in split_top_level(line[start + 1:end]):
        if part == "/":  # everything so far is positional-only
            for param in params:
                param["kind"] = "positional_only"
            continue
        if part == "*":
            keyword_only = True
            continue
        head, default = (split_top_level(part, " = ") + [None])[:2]
        name, annotation = (split_top_level(head, ": ") + [None])[:2]
        if name.startswith("**"):
            kind, name = "var_keyword", name[2:]
        elif name.startswith("*"):
            kind, name, keyword_only = "var_positional", name[1:], True
        elif keyword_only:
            kind = "keyword_only"
        elif re.fullmatch(r"arg\d+", name):  # pybind11 names unnamed arguments argN; they take no keyword
            kind = "positional_only"
        else:
            kind = "positional_or_keyword"
        params.append({"name": name, "kind": kind,
                       "type": normalize_type(annotation, names) if annotation else None,
                       "default": default, "has_default": default is not None})
    if drop_self and params and params[0]["kind"] not in ("var_positional", "var_keyword"):
        params = params[1:]
    name = line[:start]
    text = name + "(" + ", ".join(_param_text(p) for p in params) + ")" + (f" -> {returns}" if returns else "")
    return {"name": name, "text": text, "params": params, "returns": returns}


def _param_text(param: dict) -> str:
    prefix = {"var_positional": "*", "var_keyword": "**"}.get(param["kind"], "")
    text = prefix + param["name"] + (f": {param['type']}" if param["type"] else "")
    return text + (f" = {param['default']}" if param["has_default"] else "")


def parse_pybind_doc(doc: Optional[str], names: Names, drop_self: bool) -> list[dict]:
    """The overloads in a pybind11 docstring (one line per overload; ``Overloaded function.`` lists them
    numbered after a ``name(*args, **kwargs)`` header)."""
    lines = (doc or "").splitlines()
    if not lines or "(" not in lines[0]:
        return []
    if len(lines) > 1 and lines[1].strip() == "Overloaded function.":
        # Numbered lines; not matched on the name, which can differ (8.6 binds ErrorCode.__str__ as "name").
        return [parse_signature(line, names, drop_self) for line in lines if re.match(r"\d+\.\s+\w+\(", line)]
    return [parse_signature(lines[0], names, drop_self)]


def _python_signature(func: Any, drop_self: bool) -> list[dict]:
    import inspect

    params = []
    for param in inspect.signature(func).parameters.values():
        has_default = param.default is not inspect.Parameter.empty
        params.append({"name": param.name, "kind": _PARAM_KINDS[param.kind.name], "type": None,
                       "default": repr(param.default) if has_default else None, "has_default": has_default})
    if drop_self:
        params = params[1:]
    text = f"{func.__name__}(" + ", ".join(_param_text(p) for p in params) + ")"
    return [{"name": func.__name__, "text": text, "params": params, "returns": None}]


def _is_enum(cls: type) -> bool:
    return isinstance(cls.__dict__.get("__entries"), dict)


def _has_buffer_protocol(cls: type) -> bool:
    """Whether instances export the buffer protocol (pybind11 ``py::buffer_protocol()``, e.g. IHostMemory).
    Python 3.11 has no ``__buffer__`` to look at, so read ``tp_as_buffer->bf_getbuffer`` from the type
    object (PyTypeObject's 21st pointer-sized field; stable since Python 2)."""
    import ctypes

    procs = ctypes.c_void_p.from_address(id(cls) + 20 * ctypes.sizeof(ctypes.c_void_p)).value
    return bool(procs) and bool(ctypes.c_void_p.from_address(procs).value)


def _encode_value(value: Any, keys: dict) -> dict:
    cls_key = keys.get(type(value))
    if cls_key and _is_enum(type(value)):
        return {"enum": cls_key, "member": value.name}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"literal": value}
    return {"repr": repr(value)}


def _describe_class(cls: type, keys: dict, names: Names) -> dict:
    enum = _is_enum(cls)
    members: dict = {}
    for name, raw in cls.__dict__.items():
        kind = type(raw).__name__
        if name.startswith("_pybind11"):  # pybind11's cross-module plumbing (_pybind11_conduit_v1_)
            continue
        dunder = name.startswith("__") and name.endswith("__")
        if kind == "pybind11_static_property":
            if dunder:
                continue
            try:
                value = _encode_value(getattr(cls, name), keys)
            except Exception:  # a static getter needing the (stubbed) library
                value = None
            members[name] = {"kind": "static_property", "type": _getter_type(raw.fget, names), "value": value}
        elif isinstance(raw, property):
            if dunder:
                continue
            setter = raw.fset is not None
            members[name] = {"kind": "property", "type": _getter_type(raw.fget, names),
                             "getter": raw.fget is not None,  # a few are write-only
                             "setter": setter, "set_type": _setter_type(raw.fset, names) if setter else None}
        elif kind == "instancemethod":
            members[name] = {"kind": "method", "python": False,
                             "overloads": parse_pybind_doc(getattr(cls, name).__doc__, names, True)}
        elif isinstance(raw, staticmethod):
            members[name] = {"kind": "staticmethod", "python": False,
                             "overloads": parse_pybind_doc(raw.__func__.__doc__, names, False)}
        elif kind == "function":  # attached in tensorrt_bindings/__init__.py (__enter__, __exit__)
            members[name] = {"kind": "method", "python": True, "overloads": _python_signature(raw, True)}
        elif isinstance(raw, type) and raw in keys:
            members[name] = {"kind": "class", "ref": keys[raw]}
        elif not dunder and type(raw) in keys:
            if enum and type(raw) is cls:
                continue  # the enum's own members, listed under "values"
            members[name] = {"kind": "constant", "value": _encode_value(raw, keys)}
    description = {"kind": "enum" if enum else "class",
                   "bases": [keys[base] for base in cls.__bases__ if base in keys],
                   "buffer": _has_buffer_protocol(cls), "members": members}
    if enum:
        description["values"] = {name: int(member) for name, (member, _doc) in cls.__dict__["__entries"].items()}
        description["arithmetic"] = "__or__" in cls.__dict__
    return description


def _accessor_signature(func: Any, names: Names) -> Optional[dict]:
    """The signature of a pybind11 property getter/setter (``(arg0: Cls, arg1: T) -> R``); None for Python ones."""
    if type(func).__name__ not in ("builtin_function_or_method", "instancemethod"):
        return None
    overloads = parse_pybind_doc(func.__doc__, names, True)
    return overloads[0] if overloads else None


def _getter_type(func: Any, names: Names) -> Optional[str]:
    signature = _accessor_signature(func, names)
    return signature["returns"] if signature else None


def _setter_type(func: Any, names: Names) -> Optional[str]:
    signature = _accessor_signature(func, names)
    return signature["params"][-1]["type"] if signature and signature["params"] else None


def _collect_classes(module: Any, package: str) -> dict:
    """Every class of the bindings, nested ones included, keyed ``Outer.Inner`` (their ``__qualname__``)."""
    keys: dict = {}
    pending = [value for value in vars(module).values() if isinstance(value, type)]
    while pending:
        cls = pending.pop()
        if cls in keys or not cls.__module__.startswith(package):
            continue
        keys[cls] = cls.__qualname__
        pending.extend(value for value in vars(cls).values() if isinstance(value, type))
    return keys


def _describe_module(module: Any, flavour: Flavour) -> dict:
    """Layout::

        {"extractor", "version", "python", "module_name" (what code imports: tensorrt, tensorrt_rtx),
         "classes": {key: {"kind": "class"|"enum", "bases": [key], "buffer": bool,
                           "members": {name: member}, ("values": {name: int}, "arithmetic": bool)}},
         "module": {"classes": {name: key}, "functions": {name: {"python": bool, "overloads": [...]}},
                    "constants": {name: value}}}

    member: {"kind": "method"|"staticmethod", "python", "overloads"} | {"kind": "property", "type",
    "getter", "setter", "set_type"} | {"kind": "static_property", "type", "value"} | {"kind": "constant", "value"}
    | {"kind": "class", "ref"}; value: {"literal": x} | {"enum": key, "member": name} | {"repr": text};
    overload: {"name", "text", "params": [{"name", "kind", "type", "default", "has_default"}], "returns"}."""
    import types

    if not _has_buffer_protocol(bytes) or _has_buffer_protocol(int):
        raise RuntimeError(f"the buffer-protocol probe does not fit this Python's type layout ({sys.version})")
    keys = _collect_classes(module, flavour.package)
    names = Names(frozenset(keys.values()), flavour)
    surface_: dict = {"extractor": EXTRACTOR_ID, "version": module.__version__, "python": _python_tag(),
                      "module_name": flavour.module,
                      "classes": {key: _describe_class(cls, keys, names) for cls, key in sorted(
                          keys.items(), key=lambda item: item[1])},
                      "module": {"classes": {}, "functions": {}, "constants": {}}}
    top = surface_["module"]
    for name, value in sorted(vars(module).items()):
        if isinstance(value, types.ModuleType) or (name.startswith("__") and name != "__version__"):
            continue
        if isinstance(value, type) and value in keys:
            top["classes"][name] = keys[value]
        elif isinstance(value, types.BuiltinFunctionType):
            top["functions"][name] = {"python": False,
                                      "overloads": parse_pybind_doc(value.__doc__, names, False)}
        elif isinstance(value, types.FunctionType):
            top["functions"][name] = {"python": True, "overloads": _python_signature(value, False)}
        else:
            top["constants"][name] = _encode_value(value, keys)
    return surface_


def _extractor_main(module_name: str, site: str, out: str, stubs: list[str]) -> None:
    """Describe ``module_name``'s bindings from ``site`` ("-": as installed) with ``stubs`` preloaded."""
    import ctypes
    import importlib

    flavour = FLAVOURS[module_name]
    for stub in stubs:  # same sonames as the real libraries, so the loader reuses them for tensorrt.so
        ctypes.CDLL(stub, mode=ctypes.RTLD_GLOBAL)
    if site != "-":
        sys.path.insert(0, site)
    module = importlib.import_module(flavour.package)
    Path(out).write_text(json.dumps(_describe_module(module, flavour), indent=1, sort_keys=False))


if __name__ == "__main__":
    _extractor_main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:])
