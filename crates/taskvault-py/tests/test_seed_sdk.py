"""The first seed's Python SDK examples, run as its README prints them (examples 2 and 3).

The examples use names they never define (`pd`, `json`, `train_transformer`) and import
`torch` without using it: the test supplies those, counts the real work, and runs the example
text unchanged.
"""

import json
import sys
import types

import pytest

import taskvault
from taskvault.sdk import Client

DATA_PIPELINE = '''
# data_pipeline.py
from taskvault.sdk import Client

client = Client(".taskvault/config.yaml")

def process_dataset(csv_file: str) -> bytes:
    """Load CSV, normalize, aggregate."""
    
    with open(csv_file, 'rb') as f:
        input_data = f.read()
    
    # Check cache
    cached, hit = client.get_cached_result("aggregate", input_data)
    if hit:
        print("✓ Using cached aggregation result")
        return cached
    
    # Cache miss: do real work
    df = pd.read_csv(csv_file)
    result = df.groupby('category').agg({'value': 'sum'}).to_json()
    
    # Save for future runs
    client.cache_result("aggregate", input_data, result.encode())
    return result.encode()

# Even if same CSV is passed 100x, computation happens once
for i in range(100):
    output = process_dataset("sales_data.csv")  # Hits cache 99 times
'''

ML_TRAINING = '''
# train.py
from taskvault.sdk import Client
import torch, pickle

client = Client()

def train_model(dataset_path: str, hyperparams: dict):
    # Serialize hyperparams to bytes for hashing
    config = json.dumps(hyperparams, sort_keys=True).encode()
    with open(dataset_path, 'rb') as f:
        dataset = f.read()
    
    task_input = config + dataset  # Combine for full determinism
    
    # Try cache
    cached, hit = client.get_cached_result("ml_training", task_input)
    if hit:
        model = pickle.loads(cached)
        print(f"✓ Loaded model from cache (saved 2 hours of GPU time)")
        return model
    
    # Train for real
    model = train_transformer(dataset, hyperparams)
    model_bytes = pickle.dumps(model)
    
    # Cache for future identical runs
    client.cache_result("ml_training", task_input, model_bytes)
    return model

# Run with same data/params: instant result
model = train_model("dataset.pkl", {"lr": 1e-4, "epochs": 100})
'''


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project directory with the seed's config, and no vault chosen by the environment."""
    monkeypatch.chdir(tmp_path)
    for var in ("TASKVAULT_DIR", "TASKVAULT_CONFIG", "CASHET_DIR"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / ".taskvault").mkdir()
    (tmp_path / ".taskvault" / "config.yaml").write_text("cache_dir: .taskvault/cache\nmax_size_gb: 1\n")
    return tmp_path


def test_data_pipeline_example_computes_once_in_100_calls(project, capsys):
    pd = pytest.importorskip("pandas")
    (project / "sales_data.csv").write_text("category,value\na,1\nb,2\na,3\n")
    reads = []

    class CountingPandas:
        def __getattr__(self, name):
            return getattr(pd, name)

        def read_csv(self, *a, **k):
            reads.append(a)
            return pd.read_csv(*a, **k)

    ns = {"pd": CountingPandas(), "__name__": "data_pipeline"}
    exec(compile(DATA_PIPELINE, "data_pipeline.py", "exec"), ns)
    assert len(reads) == 1
    assert capsys.readouterr().out.count("✓ Using cached aggregation result") == 99
    assert json.loads(ns["output"]) == {"value": {"a": 4, "b": 2}}
    # The vault is the config's cache_dir.
    assert (project / ".taskvault" / "cache").is_dir()
    stats = ns["client"].get_stats()
    assert stats == ns["client"].stats()
    assert stats["entries"] == 1 and stats["hits"] == 99


def test_ml_training_example_trains_once_in_100_calls(project, monkeypatch, capsys):
    (project / "dataset.pkl").write_bytes(b"\x00training data\xff" * 100)
    monkeypatch.setitem(sys.modules, "torch", sys.modules.get("torch") or types.ModuleType("torch"))
    trained = []

    def train_transformer(dataset, hyperparams):
        trained.append(hyperparams)
        return {"weights": [0.5, 0.25], "hyperparams": hyperparams}

    ns = {"json": json, "train_transformer": train_transformer, "__name__": "train"}
    exec(compile(ML_TRAINING, "train.py", "exec"), ns)
    for _ in range(99):
        model = ns["train_model"]("dataset.pkl", {"lr": 1e-4, "epochs": 100})
    assert len(trained) == 1
    assert model == {"weights": [0.5, 0.25], "hyperparams": {"lr": 1e-4, "epochs": 100}}
    assert capsys.readouterr().out.count("✓ Loaded model from cache") == 99
    # Other hyperparameters: trained again.
    ns["train_model"]("dataset.pkl", {"lr": 1e-3, "epochs": 100})
    assert len(trained) == 2


def test_client_takes_a_config_file_or_a_vault_directory_and_says_which_it_expected(project):
    assert Client(".taskvault/config.yaml").store_dir == project / ".taskvault" / "cache"
    assert Client(project / "vault").store_dir == project / "vault"  # made if missing, as cashet
    (project / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="expects a config file .* or a vault directory"):
        Client("notes.txt")
    with pytest.raises(FileNotFoundError, match="no such config file"):
        Client("missing.yaml")
    assert taskvault.sdk.Client is taskvault.Client
