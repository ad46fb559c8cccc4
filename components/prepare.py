"""Component: raw data (synthetic, a local folder, or an S3 prefix) -> prepared Dataset."""

from kfp.dsl import HTML, Dataset, Markdown, Output

from dbdgan_kfp.components.factory import component


@component
def prepare(params: str, data_uri: str, dataset: Output[Dataset], summary: Output[Markdown],
            contact_sheet: Output[HTML], data_digest: str = "") -> None:
    """Prepare images, masks and manifest.csv (dbdgan.steps.prepare).

    data_uri: the raw dataset of the data.source layout: "" for synthetic data, an s3://bucket/prefix
    (downloaded first; endpoint and credentials from the pod's environment) or a folder the pod can read.
    data_digest: the S3 dataset's digest when the run was submitted (part of this task's cache key, so a
    dataset replaced under the same URI is never a stale cache hit); a different dataset there now fails.
    """
    from pathlib import Path

    from dbdgan import steps
    from dbdgan.storage import dataset_digest, download, is_s3_uri
    from dbdgan_kfp.components import _runtime as rt

    uri = data_uri.strip()
    run_params = rt.load_params(params)
    if uri and run_params.data.source == "synthetic":
        raise ValueError(f"data_uri={uri!r} is set but data.source is 'synthetic': add an override "
                         "such as data.source=cuhk (or folder, dut, szu)")
    raw = None
    if is_s3_uri(uri):  # after the source check: a wrong source fails before any download
        if data_digest.strip() and dataset_digest(uri) != data_digest.strip():
            raise ValueError(f"the dataset at {uri} changed after the run was submitted (its _SUCCESS.json digest "
                             f"is no longer {data_digest.strip()[:16]}...): submit the run again")
        # only a finished upload (its _SUCCESS.json marker is written last), never a half-uploaded prefix
        raw = download(uri, rt.scratch("raw") / "data", folder=True, require_marker=True)
    elif uri:
        raw = Path(uri)
    steps.prepare(run_params, out=Path(dataset.path), raw=raw)
    counts = rt.split_counts(dataset.path)
    dataset.metadata.update({"source": run_params.data.source, "images": sum(counts.values()), **counts})
    rt.write_text(summary.path, rt.markdown("Prepared dataset", {"source": run_params.data.source, **counts}))
    sheet = Path(dataset.path) / "contact_sheet.png"
    rt.write_text(contact_sheet.path, rt.html_page("Contact sheet", {}, [sheet]))
