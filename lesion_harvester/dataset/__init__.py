"""A dataset as the pipeline uses it, above io/'s file formats: the volumes' roles (V_M, V_H, V_H^test,
validation: :mod:`.roles`) and the cache of prepared volumes (:mod:`.prepared_cache`)."""
