"""Pulumi program entry (``Pulumi.yaml``: main ``infra/``), run by the engine as a script.

aiops must be installed in the Python that Pulumi runs (``pip install 'aiops[infra]'``); the
same program runs in-process for ``aiops deploy`` (Automation API) and under mocks for
``aiops preview --offline``.
"""

from aiops.infra.config import from_pulumi_config
from aiops.infra.program import build, export

export(build(from_pulumi_config()))
