"""What every detector of the project is (:mod:`.base`); :mod:`lesion_harvester.peers.detectors` names them."""
