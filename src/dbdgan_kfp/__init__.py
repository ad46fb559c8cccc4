"""The Kubeflow adapters around the dbdgan library: `dbdgan_kfp.components` (the top-level components/
folder) and `dbdgan_kfp.pipelines` (pipelines/). The library never imports this package; `dbdgan pipeline`
reaches it through the `dbdgan.commands` entry point."""
