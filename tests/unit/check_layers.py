#!/usr/bin/python3
"""Checks that daemon/ follows its layer table.

daemon/README.md has a table "folder | target | role | may call". The "may call" column is a
comma-separated list whose items start with a name: a daemon folder is written `name/`
(backticks optional), a single header of one `name/file.h`; words after the name are comment,
and every other item (libbpf, gRPC, ...) names an external library and is documentation only.
Every `#include "X/..."` in daemon/<layer>/*.h and *.cpp whose X is a daemon folder must be the
layer's own folder, a folder its row lists, or a header its row lists. Violations are printed as
file:line and the include; the exit status is 1 if there are any (or the table is unusable).

Usage: check_layers.py [SOURCE_DIR]   (default: the repository holding this script)
"""
import pathlib
import re
import sys

INCLUDE = re.compile(r'^\s*#\s*include\s+"(([A-Za-z0-9_]+)/[^"]+)"')
FOLDER = re.compile(r"^([a-z0-9_]+)/$")
HEADER = re.compile(r"^([a-z0-9_]+)/[A-Za-z0-9_./]+\.h$")


def cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def read_table(readme):
    """{folder: (allowed folders, allowed headers)} from the layer table."""
    rows = {}
    columns = None
    for line in readme.read_text().splitlines():
        if not line.lstrip().startswith("|"):
            columns = None  # a table ended
            continue
        row = cells(line)
        if columns is None:
            columns = [c.lower() for c in row]
            continue
        if "folder" not in columns or "may call" not in columns or len(row) != len(columns):
            continue  # another table, or a malformed row
        if set("".join(row)) <= set("-: "):
            continue  # the |---| line
        folder = row[columns.index("folder")].strip("`")
        m = FOLDER.match(folder)
        if not m:
            continue
        folders, headers = set(), set()
        for item in row[columns.index("may call")].split(","):
            words = item.split()  # an item's first word names it; the rest is comment
            item = words[0].strip("`") if words else ""
            if FOLDER.match(item):
                folders.add(FOLDER.match(item).group(1))
            elif HEADER.match(item):
                headers.add(item)
        rows[m.group(1)] = (folders, headers)
    return rows


def main():
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).parents[2])
    daemon = root / "daemon"
    readme = daemon / "README.md"
    table = read_table(readme)
    if not table:
        print(f"{readme}: no layer table (folder | target | role | may call) found")
        return 1
    layers = sorted(p.name for p in daemon.iterdir() if p.is_dir())
    problems = []
    for layer in layers:
        if layer not in table:
            problems.append(f"{readme}: daemon/{layer}/ has no row in the layer table")
    order = list(table)  # rows top to bottom: a layer calls only rows above its own
    for name, (folders, headers) in table.items():
        for target in sorted(folders | {h.split("/")[0] for h in headers}):
            if target not in layers:
                problems.append(f"{readme}: the row of {name}/ allows {target}/, which is not "
                                "a daemon folder")
            elif target in order and order.index(target) >= order.index(name):
                problems.append(f"{readme}: the row of {name}/ allows {target}/, which is not "
                                "above it in the table")
    for layer in layers:
        folders, headers = table.get(layer, (set(), set()))
        files = sorted((daemon / layer).glob("*.h")) + sorted((daemon / layer).glob("*.cpp"))
        for path in files:
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                m = INCLUDE.match(line)
                if not m:
                    continue
                include, target = m.group(1), m.group(2)
                if target not in layers or target == layer:
                    continue  # external (policyd/v1/..., the BPF ABI) or the layer's own
                if target in folders or include in headers:
                    continue
                allowed = ", ".join(sorted(f + "/" for f in folders) + sorted(headers))
                problems.append(f"{path.relative_to(root)}:{number}: {layer}/ includes "
                                f'"{include}"; daemon/README.md lets {layer}/ call only: '
                                f"{allowed or 'no daemon folder'}")
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} layer violation(s)")
        return 1
    print(f"layers ok: {len(layers)} folders of daemon/ include only what daemon/README.md allows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
