"""Finding lesions in a user's scans with a trained LPG: in memory (:mod:`.detector`), as records in the
input's voxels and world mm (:mod:`.findings`), and as files for the ``detect`` command (:mod:`.run`)."""
