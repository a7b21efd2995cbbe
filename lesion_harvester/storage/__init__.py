"""Files written safely: atomic replacement of outputs (:mod:`.atomic`) and the lock that keeps one
command per output (:mod:`.locks`). Below io/, which writes every format through them."""
