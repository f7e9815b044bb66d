import sys
from pathlib import Path

# Test folders have no __init__.py; make the repository root importable however pytest is run.
ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
