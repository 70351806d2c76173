"""Replaces the text between <!-- NAME:begin --> and <!-- NAME:end --> in a Markdown file with the
contents of a file (appending the marked section at the end if the markers are missing).

usage: replace_section.py DOC.md NAME NEW.md
"""
import sys

doc, name, new = sys.argv[1:4]
text = open(doc).read()
body = open(new).read().strip() + "\n"
begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
if begin in text and end in text:
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    text = f"{head}{begin}\n{body}{end}{tail}"
else:
    text = text.rstrip() + f"\n\n{begin}\n{body}{end}\n"
open(doc, "w").write(text)
