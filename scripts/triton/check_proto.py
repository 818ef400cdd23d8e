#!/usr/bin/env python3
"""Checks agentscale-infer/proto/inference.proto is wire-compatible with Triton.

Compiles nothing itself: takes a FileDescriptorSet of our proto (protoc -o, or
the one the Rust test writes) and compares every message/field we declare with
the descriptors shipped in tritonclient (field number, type, label, message type
name, enum values), and every method of the service. Exits 1 on a mismatch.
Usage: check_proto.py <ours.pb>
"""
import sys

from google.protobuf import descriptor_pb2
from tritonclient.grpc import service_pb2  # noqa: F401  (registers descriptors)
from tritonclient.grpc import model_config_pb2  # noqa: F401
from google.protobuf import descriptor_pool

pool = descriptor_pool.Default()
fds = descriptor_pb2.FileDescriptorSet()
fds.ParseFromString(open(sys.argv[1], "rb").read())
errors = []
checked = 0


def check_msg(prefix, m):
    global checked
    full = f"{prefix}.{m.name}"
    try:
        ref = pool.FindMessageTypeByName(full)
    except KeyError:
        errors.append(f"unknown message {full}")
        return
    for f in m.field:
        rf = ref.fields_by_name.get(f.name)
        if rf is None:
            errors.append(f"{full}.{f.name}: not in Triton")
            continue
        checked += 1
        if rf.number != f.number or rf.type != f.type or rf.label != f.label:
            errors.append(f"{full}.{f.name}: ours #{f.number} t{f.type} l{f.label} vs #{rf.number} t{rf.type} l{rf.label}")
        if f.type_name and f.type_name.lstrip(".") != (rf.message_type or rf.enum_type).full_name:
            errors.append(f"{full}.{f.name}: type {f.type_name} vs {(rf.message_type or rf.enum_type).full_name}")
        if (f.HasField("oneof_index")) != (rf.containing_oneof is not None) and not f.proto3_optional:
            errors.append(f"{full}.{f.name}: oneof mismatch")
    for n in m.nested_type:
        if n.options.map_entry:
            continue
        check_msg(full, n)
    for e in m.enum_type:
        check_enum(full, e)


def check_enum(prefix, e):
    global checked
    full = f"{prefix}.{e.name}"
    ref = pool.FindEnumTypeByName(full)
    for v in e.value:
        checked += 1
        rv = ref.values_by_name.get(v.name)
        if rv is None or rv.number != v.number:
            errors.append(f"enum {full}.{v.name}={v.number} mismatch")


for f in fds.file:
    if f.package != "inference":
        continue
    for m in f.message_type:
        check_msg("inference", m)
    for e in f.enum_type:
        check_enum("inference", e)
    for s in f.service:
        ref = pool.FindServiceByName(f"inference.{s.name}")
        for meth in s.method:
            checked += 1
            rm = ref.methods_by_name.get(meth.name)
            if rm is None:
                errors.append(f"method {meth.name} not in Triton")
                continue
            if meth.input_type.lstrip(".") != rm.input_type.full_name or meth.output_type.lstrip(".") != rm.output_type.full_name:
                errors.append(f"method {meth.name}: types differ")
            if bool(meth.client_streaming) != bool(getattr(rm, "client_streaming", meth.client_streaming)):
                errors.append(f"method {meth.name}: streaming differs")

for e in errors:
    print("MISMATCH", e)
print(f"checked {checked} fields/values/methods, {len(errors)} mismatches")
sys.exit(1 if errors else 0)
