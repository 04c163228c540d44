"""Issue 15, item 11: nothing in the app's Streamlit set-up calls out to the internet."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SCRIPT = r"""
import os, sys
os.chdir(sys.argv[1])
from streamlit import config, net_util
from streamlit.runtime import credentials

def called_out(*a, **k):
    raise SystemExit("CALLED OUT: " + sys._getframe(1).f_code.co_name)

net_util.get_external_ip = called_out          # checkip.amazonaws.com
credentials.Credentials.get_current = called_out  # the e-mail prompt (posts to data.streamlit.io)
config.get_config_options(force_reparse=True, options_from_flags={"server.headless": True})
assert config.get_option("browser.gatherUsageStats") is False
from streamlit.web import bootstrap
bootstrap._print_url(False)                      # headless start-up banner
credentials.check_credentials()
config.get_config_options(force_reparse=True)  # a plain `streamlit run` (not headless)
credentials.check_credentials()
bootstrap._print_url(False)
print("OFFLINE OK")
"""


def test_config_turns_off_everything_that_calls_out():
    cfg = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert cfg["browser"]["gatherUsageStats"] is False
    assert cfg["server"]["showEmailPrompt"] is False
    assert cfg["browser"]["serverAddress"] == "localhost"
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(REPO)], capture_output=True, text=True, timeout=120,
                       env={"HOME": "/nonexistent-home", "PATH": "/usr/bin:/bin"})
    assert "OFFLINE OK" in r.stdout, r.stdout + r.stderr
