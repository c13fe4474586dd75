"""The demo cascade as an app file: `flock serve examples/demo.py`, or run this file.

The cascade itself lives in the package (`flock.demo`, what `flock serve --demo` serves):

    Document --summarizer--> Summary  --+
    Document --keywords----> Keywords --+--reporter--> Report   (an AND gate)
"""

from __future__ import annotations

from flock.demo import Document, Keywords, Report, Summary, build

flock = build()

__all__ = ["Document", "Keywords", "Report", "Summary", "flock"]

if __name__ == "__main__":
    flock.serve()
