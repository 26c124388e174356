"""The prepare stage with the MVTec AD archive fetched from a local mirror instead of the publisher:
`python mirror_prepare.py stages/prepare.py <stage arguments>`, the mirror's URL and the archive's sha256 in
$MIRROR_URL and $MIRROR_SHA256. Everything else is the real stage."""

from __future__ import annotations

import dataclasses
import os
import runpy
import sys

from diyt.data import sources

SOURCE = "mvtec_ad"

if __name__ == "__main__":
    spec = sources.SPECS[SOURCE]
    url = os.environ["MIRROR_URL"]
    archive = dataclasses.replace(spec.archive, url=url, filename=url.rsplit("/", 1)[1],
                                  sha256=os.environ["MIRROR_SHA256"], md5=None)
    sources.SPECS[SOURCE] = dataclasses.replace(spec, archive=archive, counts={})
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
