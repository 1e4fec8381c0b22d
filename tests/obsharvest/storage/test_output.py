"""obsharvest.storage.output: the output location opened once, its secrets kept out of sight."""

from __future__ import annotations

import collections
import pickle

import fsspec
import pyarrow as pa
import pytest

from obsharvest import incremental
from obsharvest.metadata import METADATA_DIR, MetadataStore
from obsharvest.products import gallery
from obsharvest.storage.output import Output

SECRETS = {"key": "AKIA-NOT-IN-LOGS", "secret": "s3cr3t-not-in-logs"}


@pytest.fixture
def opened(monkeypatch) -> collections.Counter:
    """Every ``fsspec.core.url_to_fs`` call from here on, by URL."""
    calls: collections.Counter = collections.Counter()
    real = fsspec.core.url_to_fs

    def counting(url, **options):
        calls[str(url)] += 1
        return real(url, **options)

    monkeypatch.setattr(fsspec.core, "url_to_fs", counting)
    return calls


def _rows(target: str, *dids: str) -> pa.Table:
    n = len(dids)
    return pa.table(
        {
            "obsh_target_name": [target] * n,
            "obs_publisher_did": list(dids),
            "obs_id": list(dids),
            "dataproduct_subtype": ["lsst.calexp"] * n,
            "lsst_band": ["i"] * n,
            "obsh_verdict": ["contains"] * n,
            "obsh_quicklook_uri": [f"quicklooks/{d}.png" for d in dids],
            "obsh_storage_uri": [None] * n,
        }
    )


def test_the_options_never_show():
    """Credentials from an AwsCredentials block ride in the options: a record in a log
    line or a traceback must not print them."""
    output = Output("memory://secret-test/out", SECRETS)
    for text in (repr(output), str(output), f"{output}", repr(MetadataStore(output))):
        assert "memory://secret-test/out" in text
        assert "AKIA" not in text and "s3cr3t" not in text
    assert output.options == SECRETS  # kept, only not shown


def test_it_pickles_for_dask_and_keeps_its_file_system():
    """A Dask task runner sends the record to its workers by pickling it."""
    output = Output("memory://pickle-test/out", {"skip_instance_cache": False}, (2.0, 5.0))
    output.fs.pipe_file(output.path("x"), b"written before")
    back = pickle.loads(pickle.dumps(output))
    assert back == output and hash(back) == hash(output)
    assert (back.url, back.options, back.timeout, back.root) == (
        output.url,
        output.options,
        (2.0, 5.0),
        output.root,
    )
    assert back.fs.cat_file(back.path("x")) == b"written before"


def test_the_run_timeouts_reach_an_object_store_client():
    """The (connect, read) seconds go where s3fs reads them; the user's own still win."""
    pytest.importorskip("s3fs")
    options = {**SECRETS, "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}}
    output = Output("s3://bucket/run", options, (3, 7))
    assert output.fs.config_kwargs == {"connect_timeout": 3.0, "read_timeout": 7.0}
    assert output.options == options  # the record keeps what was given, not the merge
    assert (output.root, output.uri(), output.metadata_url) == (
        "bucket/run",
        "s3://bucket/run",
        f"s3://bucket/run/{METADATA_DIR}",
    )


def test_paths_and_prefixes_stay_on_the_one_file_system(tmp_path, opened):
    output = Output(str(tmp_path / "out") + "/")
    assert Output.of(output) is output
    assert Output.of(str(tmp_path)) == Output(str(tmp_path))  # a URL: no options
    assert output.path() == str(tmp_path / "out")
    assert output.path(METADATA_DIR, "a") == str(tmp_path / "out" / METADATA_DIR / "a")
    assert output.uri() == f"file://{tmp_path / 'out'}"
    assert output.metadata_url == f"{tmp_path / 'out'}/{METADATA_DIR}"
    shard = output.under("shards", "3")
    assert shard.url == f"{tmp_path / 'out'}/shards/3"
    assert shard.root == str(tmp_path / "out" / "shards" / "3")
    assert shard.fs is output.fs and shard.options is output.options
    assert sum(opened.values()) == 3  # the three records made here; `under` opened nothing


def test_metadata_state_and_gallery_use_the_one_opened_file_system(tmp_path, opened):
    output = Output(str(tmp_path), {"auto_mkdir": True})
    assert opened == {str(tmp_path): 1}
    store = MetadataStore(output)
    store.append(_rows("t", "ivo://a", "ivo://b"), run_id="r1")
    assert store.read().num_rows == 2
    store.compact()
    incremental.save(output, incremental.State("k", {"t": 60000.0}), run_id="r1")
    incremental.save(output, incremental.State("k", {"t": 60001.0}), run_id="r2")
    assert incremental.load(output, "k").watermarks == {"t": 60001.0}
    assert list(incremental.states(output)) == ["k"]
    incremental.fold(output)
    index, items = gallery.write_index(output)
    assert index == output.uri(output.path(gallery.GALLERY_DIR, gallery.INDEX_NAME))
    assert items == 2
    assert opened == {str(tmp_path): 1}  # nothing above opened it again


def test_a_plain_url_still_works_where_the_cli_and_notebooks_pass_one(tmp_path):
    MetadataStore(str(tmp_path)).append(_rows("t", "ivo://a"), run_id="r1")
    incremental.save(str(tmp_path), incremental.State("k", {"t": 1.0}), run_id="r1")
    assert MetadataStore(str(tmp_path)).read().num_rows == 1
    assert incremental.load(str(tmp_path), "k").watermarks == {"t": 1.0}
    assert gallery.write_index(str(tmp_path))[1] == 1


@pytest.mark.usefixtures("prefect_harness")
def test_a_harvest_opens_its_output_once(archive, tmp_path, opened):
    """An incremental run with quicklooks touches every writer (Parquet, state, gallery):
    the run opens the output once (it opened it 18 times before the record). The one other
    opening is the preflight's write probe in ``<output>/metadata``, a check that a CLI
    run makes in its own process before the flow starts."""
    from obsharvest.flows.harvest import harvest_params
    from tests.e2e.test_harvest_flow import params_for

    output = tmp_path / "out"
    params = params_for(archive, output, incremental=True, products={"quicklook": True})
    summary = harvest_params(params)
    fits = f"{output}/fits"  # the FITS' object store: opened by the image tasks
    mine = {url: n for url, n in opened.items() if not url.startswith(fits)}
    assert summary.ok and summary.stored_images
    assert summary.metadata_url == f"{output}/{METADATA_DIR}"
    assert incremental.states(str(output))  # the watermarks were saved
    assert MetadataStore(str(output)).read() is not None
    assert (output / gallery.GALLERY_DIR / gallery.INDEX_NAME).exists()
    assert mine == {str(output): 1, f"{output}/{METADATA_DIR}": 1}
