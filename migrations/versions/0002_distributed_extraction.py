"""distributed extraction: video claims and one tube per (run, video, track)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 13:40:00
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0002'
down_revision: Union[str, None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # Written by hand, checked by tests/test_migrations.py (no autogenerate diff).
    with op.batch_alter_table('run_videos', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claimed_by', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('heartbeat_at', sa.DateTime(), nullable=True))
    with op.batch_alter_table('tubes', schema=None) as batch_op:
        batch_op.create_unique_constraint(batch_op.f('uq_tubes_run_id'), ['run_id', 'video_id', 'track_index'])


def downgrade() -> None:
    with op.batch_alter_table('tubes', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('uq_tubes_run_id'), type_='unique')
    with op.batch_alter_table('run_videos', schema=None) as batch_op:
        batch_op.drop_column('heartbeat_at')
        batch_op.drop_column('claimed_by')
