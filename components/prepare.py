"""Component: raw data (synthetic, a local folder, or an S3 prefix) -> prepared Dataset."""

from kfp.dsl import HTML, Dataset, Markdown, Output

from components.factory import component


@component
def prepare_data(params_yaml: str, overrides: list, data_uri: str, dataset: Output[Dataset],
                 summary: Output[Markdown], contact_sheet: Output[HTML]) -> None:
    """Prepare images, masks and manifest.csv (dbdgan.steps.prepare).

    data_uri: "" uses data.source/data.input from params; an s3://bucket/prefix is downloaded first (the
    endpoint and credentials come from the pod's environment); any other value is a local folder.
    """
    from pathlib import Path

    from components import _runtime as rt
    from dbdgan import steps
    from dbdgan.storage import download, is_s3_uri

    uri = data_uri.strip()
    params = rt.load_params(params_yaml, overrides, {"data.input": uri} if uri else {})
    if uri and params.data.source == "synthetic":
        raise ValueError(f"data_uri={uri!r} is set but data.source is 'synthetic': add an override "
                         "such as data.source=cuhk (or folder, dut, szu)")
    if is_s3_uri(uri):  # after the source check: a wrong source fails before any download
        local = download(uri, rt.scratch("raw") / "data", folder=True)
        params = rt.load_params(params_yaml, overrides, {"data.input": str(local)})
    steps.prepare(params, out_dir=dataset.path)
    counts = rt.split_counts(dataset.path)
    dataset.metadata.update({"source": params.data.source, "images": sum(counts.values()), **counts})
    rt.write_text(summary.path, rt.markdown("Prepared dataset", {"source": params.data.source, **counts}))
    sheet = Path(dataset.path) / "contact_sheet.png"
    rt.write_text(contact_sheet.path, rt.html_page("Contact sheet", {}, [sheet]))
