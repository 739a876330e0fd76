"""The review library: decisions on clusters and concepts, and reviewer accounts.

No web framework here: the annotator's views, the headless demo and scripts all
call these functions with a SQLAlchemy session (the caller commits)::

    from conceptgen.review import decisions, users
    with workspace.session() as s:
        me = users.create_user(s, "alice", "a long password")
        decisions.accept(s, me.id, cluster_id, seen_version, name="jumping")
"""
