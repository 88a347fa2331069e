"""A checked fake ``tensorrt`` (or ``tensorrt_rtx``) module built from a real API surface
(:func:`trt_surface.surface`, :func:`trt_surface.installed_surface`).

``FakeTensorRT(surface)`` behaves like ``import tensorrt`` of that version (``import tensorrt_rtx`` for a
TensorRT-RTX surface: the fake takes the surface's module name), except that nothing runs:

* module attributes, class attributes and enum members exist exactly when they exist in the real module;
  anything else raises ``AttributeError("tensorrt 11.4.0.106 has no attribute 'BuilderFlag.INT8'")``;
* every call is matched against the real pybind11 overloads (argument count, keyword names, and the types
  of tensorrt classes/enums and of int/float/bool/str/bytes/buffer/sequence parameters) and recorded in
  ``fake.calls`` as ``(qualified name, args, kwargs)``; property assignments are checked (setter exists,
  value type) and recorded as ``("IBuilderConfig.builder_optimization_level=", (value,), {})``;
* results follow the return annotation (a fake instance of the annotated class, the first member of an
  annotated enum, ``True`` for bool, 0, 0.0, "", [], ...) unless overridden with :meth:`set_return`,
  :meth:`set_handler` or :meth:`set_attr`;
* fake classes can be subclassed like the real ones (ILogger, IProfiler, IInt8EntropyCalibrator2, ...);
  as in pybind11, a subclass ``__init__`` must call the base ``__init__``.

Deliberate approximations of pybind11, which cannot be introspected: implicit conversions are taken to be
the single-argument constructors from non-tensorrt types (tuple -> Dims, ndarray -> Weights, str ->
FallbackString); ``None`` is accepted for any tensorrt class parameter (pybind11 passes nullptr); parameters
annotated object/capsule or with a C++ type the docstring left unresolved are not type-checked.
"""
from __future__ import annotations

import functools
import importlib.machinery
import inspect
import math
import types
from typing import Any, Callable, Optional

from trt_surface import split_top_level

_INT = {"int", "typing.SupportsInt"}
_FLOAT = {"float", "typing.SupportsFloat"}
_BUFFER = {"buffer", "typing_extensions.Buffer"}
_SEQUENCE = {"List", "list", "typing.List", "Sequence", "collections.abc.Sequence", "typing.Sequence"}
_TUPLE = {"Tuple", "tuple", "typing.Tuple"}
_ITERATOR = {"Iterator", "collections.abc.Iterator", "typing.Iterator"}
_ITERABLE = {"Iterable", "collections.abc.Iterable", "typing.Iterable"}
_CALLABLE = {"Callable", "collections.abc.Callable", "typing.Callable", "function"}
_UNCHECKED_CONVERSION = {"object", "handle", "capsule", "typing_extensions.CapsuleType"}
# Protocol methods forwarded to the checked call machinery when the real class defines them. Others
# (__repr__, __hash__, __del__, __getstate__, ...) keep Python's defaults: __del__ would record at GC time.
_PROTOCOL_DUNDERS = ("__len__", "__getitem__", "__setitem__", "__iter__", "__contains__", "__enter__", "__exit__")
_NUMPY_TYPES = {"FLOAT": "float32", "HALF": "float16", "INT8": "int8", "INT32": "int32", "INT64": "int64",
                "BOOL": "bool_", "UINT8": "uint8"}
_ITEMSIZES = {"FLOAT": 4, "HALF": 2, "BF16": 2, "INT8": 1, "INT32": 4, "INT64": 8, "BOOL": 1, "UINT8": 1,
              "FP8": 1, "INT4": 0.5, "FP4": 0.5}
_API = ("calls", "calls_to", "set_return", "set_handler", "set_attr", "make", "host_memory", "trt_version",
        "surface")


@functools.lru_cache(maxsize=None)
def _parse_type(text: str) -> tuple[str, tuple]:
    """``List[Tuple[int, str]]`` -> ``("List", (("Tuple", (("int", ()), ("str", ()))),))``."""
    text = text.strip()
    if text.endswith("]") and "[" in text:
        head, inner = text.split("[", 1)
        return head.strip(), tuple(_parse_type(part) for part in split_top_level(inner[:-1]))
    return text, ()


def _unparse(parsed: tuple) -> str:
    head, args = parsed
    return f"{head}[{', '.join(_unparse(a) for a in args)}]" if args else head


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


def _describe(value: Any) -> str:
    kind = type(value)
    key = getattr(kind, "_fake_key", None)
    return f"{value!r} ({kind._fake_trt.__name__}.{key})" if key else f"{value!r} ({kind.__name__})"


class Call(tuple):
    """One recorded call: a ``(name, args, kwargs)`` tuple; ``.target`` is the fake instance it was made on
    (the new object for constructors, None for module functions and static methods)."""

    def __new__(cls, name: str, args: tuple, kwargs: dict, target: Any = None) -> "Call":
        call = super().__new__(cls, (name, args, kwargs))
        call.target = target
        return call

    name = property(lambda self: self[0])
    args = property(lambda self: self[1])
    kwargs = property(lambda self: self[2])


class _State:
    """Per-instance bookkeeping, kept out of the instance's attribute namespace."""

    def __init__(self) -> None:
        self.initialized = False  # set by a checked base __init__ (pybind11 insists on it for subclasses)
        self.values: dict = {}  # property values: assigned, set_attr(instance=...), or cached defaults
        self.returns: dict = {}  # member -> ("value", v) | ("handler", fn), from set_return/set_handler
        self.items: Optional[list] = None  # contents of Dims-like sequence values


class _FakeMeta(type):
    """Metaclass of the generated classes: checked class-level attribute access and construction."""

    def __getattr__(cls, name: str) -> Any:  # only reached for names not in the class dicts
        if name.startswith("_"):
            raise AttributeError(name)
        return cls._fake_trt._class_attribute(cls, name)

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        obj = super().__call__(*args, **kwargs)
        if not obj._fake_state.initialized:  # pybind11's check and message (naming the bound base class)
            raise TypeError(f"{cls._fake_trt.__name__}.{cls._fake_trt._keys(cls)[0]}.__init__() must be called when "
                            "overriding __init__")
        return obj


class _FakeObject:
    """Root of the fake (non-enum) classes. TensorRT members are never in the class dicts: every public
    attribute goes through the owning FakeTensorRT, which checks it against the surface."""

    _fake_trt: "FakeTensorRT"
    _fake_key: str

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        obj = super().__new__(cls)
        object.__setattr__(obj, "_fake_state", _State())
        return obj

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "_fake_generated" not in cls.__dict__:
            cls._fake_trt._check_overrides(cls)

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("_fake") or _is_dunder(name) or _user_defined(self, name):
            return object.__getattribute__(self, name)
        return type(self)._fake_trt._get(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        type(self)._fake_trt._set(self, name, value)

    # Identity semantics like pybind11 objects, also for the bytearray-backed buffer classes.
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __repr__(self) -> str:
        trt = type(self)._fake_trt
        return f"<fake {trt.__name__} {trt.trt_version} {type(self).__qualname__} at {id(self):#x}>"


def _user_defined(obj: Any, name: str) -> bool:
    """Whether ``name`` is the user's own (instance dict, or a class dict of a user subclass)."""
    if name in object.__getattribute__(obj, "__dict__"):
        return True
    return any(name in klass.__dict__ for klass in type(obj).__mro__
               if "_fake_generated" not in klass.__dict__ and klass not in (_FakeObject, bytearray, object))


class _FakeEnumMeta(type):
    def __getattr__(cls, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return cls._fake_trt._class_attribute(cls, name)

    def __call__(cls, value: int) -> Any:  # Enum(int) as pybind11 allows; unknown values are rejected
        for member in cls.__members__.values():
            if member.value == value:
                return member
        raise ValueError(f"{cls._fake_trt.__name__} {cls._fake_trt.trt_version}: {cls.__qualname__} has no member "
                         f"with value {value!r}")


class _FakeEnumMember:
    """A member of a fake enum: a singleton, equal only to itself, with the real integer value."""

    __slots__ = ("name", "value")
    _fake_trt: "FakeTensorRT"
    _fake_key: str

    def __int__(self) -> int:
        return self.value

    __index__ = __int__

    def __eq__(self, other: Any) -> bool:
        return self is other

    def __hash__(self) -> int:
        return hash((self._fake_key, self.name))

    def __copy__(self) -> "_FakeEnumMember":
        return self

    def __deepcopy__(self, memo: dict) -> "_FakeEnumMember":
        return self

    def __repr__(self) -> str:
        return f"<{type(self).__name__}.{self.name}: {self.value}>"

    def __str__(self) -> str:
        return f"{type(self).__name__}.{self.name}"

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self)._fake_trt.__name__} enum members are immutable ({self!r}.{name})")

    def __getattr__(self, name: str) -> Any:  # other members of the enum class (DataType.itemsize)
        if name.startswith("_"):
            raise AttributeError(name)
        return type(self)._fake_trt._get(self, name)


class _Callable:
    """A checked callable: bound method, unbound method, static method or module function."""

    def __init__(self, trt: "FakeTensorRT", qualname: str, member: dict, owner: Any = None,
                 needs_self: Optional[type] = None) -> None:
        self._trt, self._qualname, self._member = trt, qualname, member
        self._owner, self._needs_self = owner, needs_self
        self.__doc__ = "\n".join(o["text"] for o in member["overloads"])

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        owner = self._owner
        if self._needs_self is not None:  # Cls.method(obj, ...)
            if not args or not isinstance(args[0], self._needs_self):
                raise TypeError(f"{self._trt.__name__} {self._trt.trt_version}: {self._qualname}() needs a "
                                f"{self._needs_self.__qualname__} instance as first argument")
            owner, args = args[0], args[1:]
        return self._trt._call(owner, self._qualname, self._member, args, kwargs)

    def __repr__(self) -> str:
        return f"<fake {self._trt.__name__} {self._trt.trt_version} {self._qualname}>"


class _PropertyRef:
    """What class-level access to a property returns (the real one is a ``property`` object)."""

    def __init__(self, qualname: str, member: dict) -> None:
        self.qualname, self.member = qualname, member

    def __repr__(self) -> str:
        return f"<fake property {self.qualname}>"


class FakeTensorRT(types.ModuleType):
    """The fake module; see the module docstring. Test-side API (none of these names exist in tensorrt):

    * ``calls`` — list of :class:`Call`; ``calls_to(name)`` filters by qualified name;
    * ``set_return("Class.method", value, instance=None)`` / ``set_handler("Class.method", fn,
      instance=None)`` (``fn(self_obj, *args, **kwargs)``; without ``self_obj`` for static methods and for
      module functions, which a bare name targets); the value is checked against the return annotation
      (bytes become IHostMemory, tuples Dims, ...); overrides on a class apply to its subclasses;
    * ``set_attr("Class.property", value, instance=None)`` — the value a property reads (read-only ones
      too), for every instance of Class and its subclasses or for one instance;
    * ``make("ICudaEngine")`` — a fake instance without calling a constructor; ``host_memory(b"...")``;
    * ``trt_version``, ``surface``.
    """

    def __init__(self, surface: dict) -> None:
        super().__init__(surface["module_name"])  # tensorrt, or tensorrt_rtx
        self.__version__ = surface["version"]
        self.__spec__ = importlib.machinery.ModuleSpec(self.__name__, None)
        self.trt_version: str = surface["version"]
        self.surface = surface
        self.calls: list[Call] = []
        self._fake_classes: dict[str, type] = {}
        self._fake_members: dict[tuple[str, str], Optional[tuple[str, dict]]] = {}
        self._fake_class_values: dict[str, Any] = {}  # "Class.member" -> value, from set_attr
        self._fake_class_returns: dict[str, tuple] = {}  # "Class.member" -> ("value"|"handler", x)
        self._fake_conversions: dict[str, tuple[str, ...]] = {}
        self._fake_sequence_classes: dict[str, bool] = {}
        module = surface["module"]
        clashes = set(_API) & (set(module["classes"]) | set(module["functions"]) | set(module["constants"]))
        if clashes:
            raise RuntimeError(f"{self.__name__} {self.trt_version} defines {sorted(clashes)}, used by FakeTensorRT")
        for key in surface["classes"]:
            self._fake_class(key)
        for name, key in module["classes"].items():
            setattr(self, name, self._fake_classes[key])
        for name, function in module["functions"].items():
            setattr(self, name, _Callable(self, name, {"kind": "function", **function}))
        for name, value in module["constants"].items():
            setattr(self, name, self._decode(value))

    def __getattr__(self, name: str) -> Any:  # module attributes the real module lacks
        if _is_dunder(name):
            raise AttributeError(f"module '{self.__name__}' has no attribute '{name}'")
        raise AttributeError(f"{self.__name__} {self.trt_version} has no attribute '{name}'")

    # ------------------------------------------------------------------ test-side API

    def calls_to(self, name: str) -> list[Call]:
        return [call for call in self.calls if call.name == name]

    def set_return(self, target: str, value: Any, *, instance: Any = None) -> None:
        self._set_override(target, ("value", value), instance)

    def set_handler(self, target: str, handler: Callable[..., Any], *, instance: Any = None) -> None:
        self._set_override(target, ("handler", handler), instance)

    def set_attr(self, target: str, value: Any, *, instance: Any = None) -> None:
        key, name, member = self._resolve_target(target, instance)
        if member["kind"] not in ("property", "static_property"):
            raise ValueError(f"{self.__name__} {self.trt_version}: {target} is a {member['kind']}, not a property; "
                             "use set_return/set_handler for methods")
        value = self._coerce(value, member.get("type"), target)
        if instance is None:
            self._fake_class_values[f"{key}.{name}"] = value
        else:
            instance._fake_state.values[name] = value

    def make(self, class_name: str) -> Any:
        """A fake instance of ``class_name`` as TensorRT would hand it out (no constructor call recorded)."""
        cls = self._class_by_name(class_name)
        if not issubclass(cls, _FakeObject):
            raise TypeError(f"{class_name} is an enum; use its members")
        return self._instance(cls)

    def host_memory(self, data: bytes = b"") -> Any:
        """A fake IHostMemory holding ``data`` (supports bytes(), len() and the buffer protocol)."""
        return self._instance(self._class_by_name("IHostMemory"), content=bytes(data))

    # ------------------------------------------------------------------ class construction

    def _fake_class(self, key: str) -> type:
        if key in self._fake_classes:
            return self._fake_classes[key]
        spec = self.surface["classes"][key]
        short = key.rsplit(".", 1)[-1]
        namespace = {"_fake_trt": self, "_fake_key": key, "_fake_generated": True, "__module__": self.__name__,
                     "__qualname__": key}
        if spec["kind"] == "enum":
            cls = _FakeEnumMeta(short, (_FakeEnumMember,), {**namespace, "__slots__": ()})
            members = {}
            for name, value in spec["values"].items():
                member = object.__new__(cls)
                object.__setattr__(member, "name", name)
                object.__setattr__(member, "value", value)
                members[name] = member
                type.__setattr__(cls, name, member)
            type.__setattr__(cls, "__members__", types.MappingProxyType(members))
        else:
            bases = tuple(self._fake_class(base) for base in spec["bases"]) or (_FakeObject,)
            if spec["buffer"] and not any(issubclass(base, bytearray) for base in bases):
                bases += (bytearray,)  # a Python class can only export the buffer protocol by inheriting it
            namespace["__init__"] = self._make_init(key)
            cls = _FakeMeta(short, bases, namespace)
        self._fake_classes[key] = cls
        if spec["kind"] != "enum":
            self._add_dunders(cls)
        return cls

    def _make_init(self, key: str) -> Callable[..., None]:
        def __init__(obj: Any, *args: Any, **kwargs: Any) -> None:
            member = self._member(key, "__init__")
            if member is None:
                raise TypeError(f"{self.__name__} {self.trt_version}: {key}: No constructor defined! (instances come "
                                "from TensorRT calls; use trt_fake.make() in tests)")
            overload, bound = self._bind(f"{key}.__init__", member["overloads"], args, kwargs)
            self.calls.append(Call(f"{key}.__init__", args, kwargs, obj))
            state = obj._fake_state
            state.initialized = True
            if self._is_sequence_class(type(obj)):
                state.items = self._items_from_bound(bound)

        return __init__

    def _add_dunders(self, cls: type) -> None:
        if self._is_sequence_class(cls):  # Dims, Dims2..4, DimsHW, Permutation: a real value type
            for name, func in _SEQUENCE_DUNDERS.items():
                setattr(cls, name, func)
            return
        for name in _PROTOCOL_DUNDERS:
            if name in self.surface["classes"][cls._fake_key]["members"]:
                setattr(cls, name, _protocol_dunder(name))

    # ------------------------------------------------------------------ lookups

    def _class_by_name(self, name: str) -> type:
        if name not in self._fake_classes:
            raise AttributeError(f"{self.__name__} {self.trt_version} has no attribute '{name}'")
        return self._fake_classes[name]

    def _member(self, key: str, name: str) -> Optional[dict]:
        found = self._owned_member(key, name)
        return found[1] if found else None

    def _owned_member(self, key: str, name: str) -> Optional[tuple[str, dict]]:
        """(defining class, member spec) of ``name`` on class ``key``, following the real bases."""
        cache_key = (key, name)
        if cache_key not in self._fake_members:
            found = None
            for owner in self._keys(self._fake_classes[key]):
                members = self.surface["classes"][owner]["members"]
                if name in members:
                    found = (owner, members[name])
                    break
            self._fake_members[cache_key] = found
        return self._fake_members[cache_key]

    def _keys(self, cls: type) -> list[str]:
        """The generated classes of ``cls``'s MRO, nearest first (a user subclass contributes none)."""
        return [k.__dict__["_fake_key"] for k in cls.__mro__ if "_fake_generated" in k.__dict__]

    def _missing(self, key: str, name: str) -> AttributeError:
        return AttributeError(f"{self.__name__} {self.trt_version} has no attribute '{key}.{name}'")

    def _class_attribute(self, cls: type, name: str) -> Any:
        key = self._keys(cls)[0]
        member = self._member(key, name)
        if member is None:
            raise self._missing(key, name)
        kind = member["kind"]
        if kind == "method":
            return _Callable(self, f"{key}.{name}", member, needs_self=cls)
        if kind == "staticmethod":
            return _Callable(self, f"{key}.{name}", member)
        if kind == "property":
            return _PropertyRef(f"{key}.{name}", member)
        if kind == "static_property":
            return self._property_value(None, cls, name)
        if kind == "class":
            return self._fake_classes[member["ref"]]
        return self._decode(member["value"])

    # ------------------------------------------------------------------ instance attributes

    def _get(self, obj: Any, name: str) -> Any:
        key = self._keys(type(obj))[0]
        member = self._member(key, name)
        if member is None:
            raise self._missing(key, name)
        kind = member["kind"]
        if kind in ("method", "staticmethod"):
            return _Callable(self, f"{key}.{name}", member, owner=obj if kind == "method" else None)
        if kind == "property":
            if not member["getter"]:
                raise AttributeError(f"{self.__name__} {self.trt_version}: property '{key}.{name}' is write-only")
            return self._property_value(obj, type(obj), name)
        return self._class_attribute(type(obj), name)

    def _property_value(self, obj: Any, cls: type, name: str) -> Any:
        owner, member = self._owned_member(self._keys(cls)[0], name)
        state = obj._fake_state if isinstance(obj, _FakeObject) else None
        if state is not None and name in state.values:
            return state.values[name]
        for key in self._keys(cls):
            if f"{key}.{name}" in self._fake_class_values:
                return self._fake_class_values[f"{key}.{name}"]
        if member["kind"] == "static_property" and member["value"] is not None:
            return self._decode(member["value"])
        helper = _PROPERTY_HELPERS.get((owner, name))
        if helper is not None and obj is not None:
            return helper(obj)
        if self._user_implemented(member["type"]):
            return None  # callback interfaces (int8_calibrator, profiler, ...) read back what was set
        value = self._default(member["type"], for_property=True)
        if state is not None and isinstance(value, _FakeObject):
            state.values[name] = value  # the same sub-object on every read, like context.engine
        return value

    def _set(self, obj: Any, name: str, value: Any) -> None:
        key = self._keys(type(obj))[0]
        member = self._member(key, name)
        user_class = "_fake_generated" not in type(obj).__dict__
        if member is None or member["kind"] != "property":
            if user_class:  # Python subclasses have a __dict__, as with pybind11
                object.__setattr__(obj, name, value)
                return
            if member is None:
                raise self._missing(key, name)
            raise AttributeError(f"{self.__name__} {self.trt_version}: '{key}.{name}' is a {member['kind']}, not a "
                                 "settable property")
        if not member["setter"]:
            raise AttributeError(f"{self.__name__} {self.trt_version}: property '{key}.{name}' is read-only")
        reason = self._check(value, member["set_type"])
        if reason:
            raise TypeError(f"{self.__name__} {self.trt_version}: {key}.{name} = {_describe(value)}: {reason}")
        self.calls.append(Call(f"{key}.{name}=", (value,), {}, obj))
        obj._fake_state.values[name] = self._coerce(value, member["set_type"], f"{key}.{name}")

    def _check_overrides(self, cls: type) -> None:
        """A user subclass overriding a TensorRT method must accept the arguments TensorRT passes."""
        key = self._keys(cls)[0]
        for name, func in cls.__dict__.items():
            member = self._member(key, name)
            if _is_dunder(name) or member is None or member["kind"] != "method" or not inspect.isfunction(func):
                continue
            signature = inspect.signature(func)
            shapes = [len(o["params"]) for o in member["overloads"]]
            if not any(_accepts(signature, count) for count in shapes):
                texts = "; ".join(o["text"] for o in member["overloads"])
                raise TypeError(f"{cls.__qualname__}.{name}{signature} overrides {self.__name__} {self.trt_version} "
                                f"{key}.{name}, which is called as {texts}")

    # ------------------------------------------------------------------ calls

    def _call(self, obj: Any, qualname: str, member: dict, args: tuple, kwargs: dict) -> Any:
        overload, _bound = self._bind(qualname, member["overloads"], args, kwargs)
        self.calls.append(Call(qualname, args, kwargs, obj))
        name = qualname.rpartition(".")[2]
        if isinstance(obj, _FakeObject):  # per instance, then the instance's classes nearest first
            override = obj._fake_state.returns.get(name)
            targets = [f"{key}.{name}" for key in self._keys(type(obj))]
        else:  # static methods and module functions
            override, targets = None, [qualname]
        if override is None:
            override = next((self._fake_class_returns[t] for t in targets if t in self._fake_class_returns), None)
        returns = overload["returns"] if overload else None
        if override is not None:
            how, value = override
            result = (value(*args, **kwargs) if obj is None else value(obj, *args, **kwargs)) \
                if how == "handler" else value
            return self._coerce(result, returns, qualname)
        if name == "__enter__":
            return obj
        helper = _FUNCTION_HELPERS.get(qualname) if member.get("python") else None
        if helper is not None:
            return helper(self, *args, **kwargs)
        return self._default(returns, for_property=False)

    def _bind(self, qualname: str, overloads: list, args: tuple, kwargs: dict) -> tuple[Optional[dict], dict]:
        """The first overload accepting the arguments (pybind11 tries them in order) and its bound
        ``{param name: (param, value)}``; TypeError listing why each overload refused otherwise."""
        if not overloads:  # nothing to check against (never seen in the four surfaces)
            return None, {}
        reasons = []
        for overload in overloads:
            bound, reason = self._bind_one(overload, args, kwargs)
            if bound is not None:
                return overload, bound
            reasons.append(f"  {overload['text']}: {reason}")
        shown = ", ".join([_describe(a) for a in args] + [f"{k}={_describe(v)}" for k, v in kwargs.items()])
        raise TypeError(f"{self.__name__} {self.trt_version}: {qualname}() got incompatible arguments ({shown}):\n"
                        + "\n".join(reasons))

    def _bind_one(self, overload: dict, args: tuple, kwargs: dict) -> tuple[Optional[dict], str]:
        params = overload["params"]
        positional = [p for p in params if p["kind"] in ("positional_only", "positional_or_keyword")]
        kinds = {p["kind"] for p in params}
        if len(args) > len(positional) and "var_positional" not in kinds:
            return None, f"takes at most {len(positional)} positional argument(s), got {len(args)}"
        bound = {p["name"]: (p, value) for p, value in zip(positional, args)}
        for name, value in kwargs.items():
            param = next((p for p in params if p["name"] == name
                          and p["kind"] in ("positional_or_keyword", "keyword_only")), None)
            if param is None:
                if "var_keyword" in kinds:
                    continue
                names = [p["name"] for p in params if p["kind"] in ("positional_or_keyword", "keyword_only")]
                return None, f"unexpected keyword argument '{name}' (keywords: {', '.join(names) or 'none'})"
            if name in bound:
                return None, f"got multiple values for argument '{name}'"
            bound[name] = (param, value)
        for param in params:
            if param["kind"] not in ("var_positional", "var_keyword") and param["name"] not in bound \
                    and not param["has_default"]:
                return None, f"missing required argument '{param['name']}'"
        for name, (param, value) in bound.items():
            reason = self._check(value, param["type"])
            if reason:
                return None, f"argument '{name}': {reason}"
        return bound, ""

    # ------------------------------------------------------------------ types

    def _class_key(self, annotation: Optional[str]) -> Optional[str]:
        """``"Builder"`` for the annotation ``tensorrt.Builder`` (``tensorrt_rtx.Builder`` in a TensorRT-RTX
        surface); None for annotations that are not one of the module's classes."""
        prefix = f"{self.__name__}."
        return annotation[len(prefix):] if annotation and annotation.startswith(prefix) else None

    def _check(self, value: Any, annotation: Optional[str]) -> Optional[str]:
        """None if pybind11 would accept ``value`` for ``annotation``, else why not."""
        if annotation is None:
            return None
        return self._check_parsed(value, _parse_type(annotation))

    def _check_parsed(self, value: Any, parsed: tuple) -> Optional[str]:
        head, args = parsed
        expected = f"expected {_unparse(parsed)}, got {_describe(value)}"
        if self._class_key(head) is not None:
            cls = self._fake_classes.get(self._class_key(head))
            if cls is None or isinstance(value, cls):
                return None
            if issubclass(cls, _FakeEnumMember):
                return expected
            if value is None:
                return None
            refusals = [self._check(value, source) for source in self._conversions(cls._fake_key)]
            if refusals and None in refusals:
                return None
            return f"{expected}" + (f" (not convertible: {'; '.join(refusals)})" if refusals else "")
        if head in _INT:
            ok = not isinstance(value, (float, str, bytes)) and hasattr(type(value), "__index__")
        elif head in _FLOAT:
            ok = not isinstance(value, (str, bytes)) and (hasattr(type(value), "__float__")
                                                          or hasattr(type(value), "__index__"))
        elif head == "bool":  # pybind11 converts None, numbers and numpy.bool_
            ok = value is None or isinstance(value, (int, float)) or type(value).__name__ == "bool_"
        elif head == "str":
            ok = isinstance(value, (str, bytes))
        elif head == "bytes":
            ok = isinstance(value, bytes)
        elif head in _BUFFER:
            try:
                memoryview(value)
                ok = True
            except TypeError:
                ok = False
        elif head in _SEQUENCE and args or head in _TUPLE and args:
            if isinstance(value, (str, bytes)) or not hasattr(type(value), "__getitem__") or isinstance(value, dict):
                return expected
            items = list(value)
            if head in _TUPLE and len(items) != len(args):
                return f"{expected} (length {len(items)}, not {len(args)})"
            for index, item in enumerate(items):
                reason = self._check_parsed(item, args[0] if head in _SEQUENCE else args[index])
                if reason:
                    return f"{expected}: item {index}: {reason}"
            return None
        elif head == "list":
            ok = isinstance(value, list)
        elif head == "tuple":
            ok = isinstance(value, tuple)
        elif head in _ITERABLE:
            ok = hasattr(type(value), "__iter__") or hasattr(type(value), "__getitem__")
        elif head in _CALLABLE:
            ok = callable(value)
        elif head == "slice":
            ok = isinstance(value, slice)
        elif head == "numpy.ndarray":
            ok = any(k.__name__ == "ndarray" and k.__module__ == "numpy" for k in type(value).__mro__)
        else:  # object, capsule, unresolved C++ names: pybind11 takes (nearly) anything
            ok = True
        return None if ok else expected

    def _user_implemented(self, annotation: Optional[str]) -> bool:
        """A callback interface users subclass (ILogger, IProfiler, IInt8Calibrator, ...): an I-class with a
        Python constructor."""
        key = self._class_key(annotation) or ""
        spec = self.surface["classes"].get(key)
        return key.startswith("I") and spec is not None and "__init__" in spec["members"]

    def _conversions(self, key: str) -> tuple[str, ...]:
        """Types pybind11 implicitly converts to class ``key``, approximated by its one-argument
        constructors from a non-tensorrt type (tuple/list -> Dims, ndarray -> Weights, str -> FallbackString)."""
        if key not in self._fake_conversions:
            member = self.surface["classes"][key]["members"].get("__init__")
            types_ = []
            for overload in member["overloads"] if member else ():
                params = overload["params"]
                if len(params) == 1 and params[0]["kind"] != "keyword_only" and params[0]["type"] \
                        and self._class_key(params[0]["type"]) is None \
                        and _parse_type(params[0]["type"])[0] not in _UNCHECKED_CONVERSION:
                    types_.append(params[0]["type"])
            self._fake_conversions[key] = tuple(types_)
        return self._fake_conversions[key]

    def _is_sequence_class(self, cls: type) -> bool:
        """Dims-like value types: indexable, with a constructor from a sequence of ints."""
        key = cls._fake_key
        if key not in self._fake_sequence_classes:
            self._fake_sequence_classes[key] = (
                self._member(key, "__len__") is not None and self._member(key, "__getitem__") is not None
                and any(_is_int_sequence(t) for t in self._conversions(key)))
        return self._fake_sequence_classes[key]

    def _items_from_bound(self, bound: dict) -> list:
        values = [(param, value) for param, value in bound.values()]
        if len(values) == 1 and _is_int_sequence(values[0][0]["type"]):
            return [int(v) for v in values[0][1]]
        return [int(value) for _param, value in values]

    def _coerce(self, value: Any, annotation: Optional[str], what: str) -> Any:
        """An override or assigned value as TensorRT would hand it back (tuple -> Dims, bytes ->
        IHostMemory, elementwise in lists), after checking the annotation allows it."""
        if value is None or annotation is None:
            return value
        head, args = _parse_type(annotation)
        cls = self._fake_classes.get(self._class_key(head)) if self._class_key(head) is not None else None
        if cls is not None and issubclass(cls, bytearray) and not isinstance(value, cls):
            try:
                return self._instance(cls, content=bytes(memoryview(value)))
            except TypeError:
                pass
        reason = self._check(value, annotation)
        if reason:
            raise TypeError(f"{self.__name__} {self.trt_version}: {what} gives {annotation}: {reason}")
        if cls is not None and not isinstance(value, cls) and self._is_sequence_class(cls):
            return self._instance(cls, items=[int(v) for v in value])
        if head in _SEQUENCE and args:
            return [self._coerce(item, _unparse(args[0]), what) for item in value]
        return value

    def _default(self, annotation: Optional[str], for_property: bool) -> Any:
        """What an un-overridden call/property gives for its annotation."""
        if annotation is None:
            return None
        return self._default_parsed(_parse_type(annotation), for_property)

    def _default_parsed(self, parsed: tuple, for_property: bool) -> Any:
        head, args = parsed
        if self._class_key(head) is not None:
            cls = self._fake_classes.get(self._class_key(head))
            if cls is None:
                return None
            if issubclass(cls, _FakeEnumMember):
                return next(iter(cls.__members__.values()))
            return self._instance(cls)
        if head in _INT:
            return 0
        if head in _FLOAT:
            return 0.0
        if head == "bool":  # calls report success; flags-like properties read False
            return not for_property
        if head == "str":
            return ""
        if head in ("bytes", *_BUFFER):
            return b""
        if head == "memoryview":
            return memoryview(b"")
        if head in _SEQUENCE or head == "list":
            return []
        if head in _ITERATOR:
            return iter(())
        if head in _TUPLE:
            return tuple(self._default_parsed(a, for_property) for a in args)
        return None

    def _instance(self, cls: type, items: Optional[list] = None, content: bytes = b"") -> Any:
        obj = cls.__new__(cls)
        if isinstance(obj, bytearray):
            bytearray.extend(obj, content)
        state = obj._fake_state
        state.initialized = True
        if self._is_sequence_class(cls):
            state.items = list(items or [])
        return obj

    def _decode(self, value: dict) -> Any:
        if "literal" in value:
            return value["literal"]
        if "enum" in value:
            return getattr(self._fake_classes[value["enum"]], value["member"])
        raise ValueError(f"{self.__name__} {self.trt_version}: cannot rebuild the constant {value}")

    # ------------------------------------------------------------------ overrides

    def _resolve_target(self, target: str, instance: Any) -> tuple[str, str, dict]:
        key, _, name = target.rpartition(".")
        if not key:
            function = self.surface["module"]["functions"].get(name)
            if function is None or instance is not None:
                raise AttributeError(f"{self.__name__} {self.trt_version} has no function '{name}'")
            return "", name, {"kind": "function", **function}
        if key not in self._fake_classes:
            hint = f" (did you mean '{key[1:]}'?)" if key.startswith("I") and key[1:] in self._fake_classes else ""
            raise AttributeError(f"{self.__name__} {self.trt_version} has no class '{key}'{hint}")
        if instance is not None and key not in self._keys(type(instance)):
            raise TypeError(f"{target}: {instance!r} is not a {self.__name__}.{key}")
        member = self._member(key, name)
        if member is None:
            raise self._missing(key, name)
        return key, name, member

    def _set_override(self, target: str, override: tuple, instance: Any) -> None:
        key, name, member = self._resolve_target(target, instance)
        if member["kind"] not in ("method", "staticmethod", "function"):
            raise ValueError(f"{self.__name__} {self.trt_version}: {target} is a {member['kind']}; use set_attr")
        if override[0] == "value":
            returns = [o["returns"] for o in member["overloads"]]
            override = ("value", self._coerce(override[1], returns[0] if len(set(returns)) == 1 else None, target))
        if instance is None:
            self._fake_class_returns[f"{key}.{name}" if key else name] = override
        else:
            instance._fake_state.returns[name] = override


def _accepts(signature: inspect.Signature, count: int) -> bool:
    try:
        signature.bind(None, *range(count))
        return True
    except TypeError:
        return False


def _is_int_sequence(annotation: Optional[str]) -> bool:
    if not annotation:
        return False
    head, args = _parse_type(annotation)
    return head in _SEQUENCE and len(args) == 1 and args[0][0] in _INT


def _protocol_dunder(name: str) -> Callable[..., Any]:
    def dunder(self: Any, *args: Any, **kwargs: Any) -> Any:
        trt = type(self)._fake_trt
        key = trt._keys(type(self))[0]
        return trt._call(self, f"{key}.{name}", trt._member(key, name), args, kwargs)

    dunder.__name__ = name
    return dunder


def _items(obj: Any) -> list:
    return obj._fake_state.items


def _sequence_getitem(self: Any, index: Any) -> Any:
    items = _items(self)
    return tuple(items[index]) if isinstance(index, slice) else items[index]


def _sequence_setitem(self: Any, index: int, value: int) -> None:
    if not hasattr(type(value), "__index__"):
        raise TypeError(f"{type(self).__qualname__} entries are int, got {_describe(value)}")
    _items(self)[index] = int(value)


def _sequence_eq(self: Any, other: Any) -> bool:
    if isinstance(other, _FakeObject) and other._fake_state.items is not None:
        return _items(self) == _items(other)
    return isinstance(other, (list, tuple)) and tuple(_items(self)) == tuple(other)


_SEQUENCE_DUNDERS = {
    "__len__": lambda self: len(_items(self)),
    "__getitem__": _sequence_getitem,
    "__setitem__": _sequence_setitem,
    "__iter__": lambda self: iter(list(_items(self))),
    "__eq__": _sequence_eq,
    "__hash__": None,  # unhashable, as the real Dims
    "__repr__": lambda self: repr(tuple(_items(self))),
    "__str__": lambda self: repr(tuple(_items(self))),
}


def _nptype(trt: FakeTensorRT, trt_type: Any) -> Any:
    import numpy as np

    name = _NUMPY_TYPES.get(getattr(trt_type, "name", None))
    if name is None or getattr(type(trt_type), "_fake_key", None) != "DataType":
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
    return getattr(np, name)


# Defaults for the pure-Python helpers tensorrt/__init__.py defines (behaviour, not copied code).
_FUNCTION_HELPERS: dict[str, Callable[..., Any]] = {
    "volume": lambda trt, iterable: math.prod(iterable),
    "nptype": _nptype,
}
_PROPERTY_HELPERS: dict[tuple[str, str], Callable[[Any], Any]] = {
    ("DataType", "itemsize"): lambda member: _ITEMSIZES.get(member.name),
    ("IHostMemory", "nbytes"): len,
}
