"""What the SQLite and MongoDB stores share, whatever the database.

times.py: times as integer epoch microseconds, and the wall clock leases
are measured on. changes.py: the checks a store makes on what it is given
and the conflicts it answers. search.py: the form both sides of a text
search are stored and matched in. outbox.py: the rules of the outbox
(claims from the head, retention from the head, reads after a pruning),
as pure functions over rows each store reads its own way.
"""
