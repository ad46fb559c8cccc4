"""The KFP pipeline (installed as `dbdgan_kfp.pipelines`): wiring, cluster settings, `dbdgan pipeline ...`."""
