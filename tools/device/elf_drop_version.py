#!/usr/bin/env python3
"""Remove symbol-version requirements from an ELF64 shared library, in place.

usage: elf_drop_version.py FILE VERSION...   (e.g. libevent_core-2.1.so.7 GLIBC_2.36)

The dynamic loader refuses a library whose .gnu.version_r requires a version its libc lacks
("version `GLIBC_2.36' not found"), even when no symbol is bound to that version any more:
patchelf --clear-symbol-version unbinds the symbols but leaves the requirement behind, and
marking it weak still makes every process print a warning. This unlinks the requirement from its
chain (the entry's bytes stay, unreferenced). Run it only after every symbol of that version has
been unbound; the symbols must then come from somewhere (tools/device/device_check.sh prepare adds a
shim library for them). Exit 1 if a VERSION is not required by FILE.
"""
import struct
import sys

SHT_GNU_VERNEED = 0x6FFFFFFE
VERNEED = "<HHIII"  # vn_version, vn_cnt, vn_file, vn_aux, vn_next
VERNAUX = "<IHHII"  # vna_hash, vna_flags, vna_other, vna_name, vna_next


def main():
    path, wanted = sys.argv[1], set(sys.argv[2:])
    with open(path, "rb") as f:
        elf = bytearray(f.read())
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise SystemExit(f"{path}: not a little-endian ELF64 file")
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", elf, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", elf, shoff + i * shentsize) for i in range(shnum)]
    dropped = set()
    for _, sh_type, _, _, offset, _, link, count, _, _ in sections:
        if sh_type != SHT_GNU_VERNEED:
            continue
        strtab = sections[link][4]
        need = offset
        for _ in range(count):
            version, cnt, file_name, aux, next_need = struct.unpack_from(VERNEED, elf, need)
            # Walk the chain, keeping the offsets of the entries that stay.
            kept, entry = [], need + aux
            for _ in range(cnt):
                _, _, _, name, next_aux = struct.unpack_from(VERNAUX, elf, entry)
                version_name = elf[strtab + name:elf.index(b"\0", strtab + name)].decode()
                if version_name in wanted:
                    dropped.add(version_name)
                else:
                    kept.append(entry)
                entry += next_aux
            if len(kept) != cnt:
                if not kept:
                    raise SystemExit(f"{path}: every version of one library would go")
                struct.pack_into(VERNEED, elf, need, version, len(kept), file_name,
                                 kept[0] - need, next_need)
                for here, there in zip(kept, kept[1:] + [None]):
                    struct.pack_into("<I", elf, here + 12, 0 if there is None else there - here)
            need += next_need
    missing = wanted - dropped
    if missing:
        raise SystemExit(f"{path}: does not require {', '.join(sorted(missing))}")
    with open(path, "r+b") as f:
        f.write(elf)


if __name__ == "__main__":
    main()
