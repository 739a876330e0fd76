"""tube objectness: a score, its features and the background tag

Revision ID: 0004_issue20
Revises: 0003_issue26
Create Date: 2026-12-06 05:00:00
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


revision: str = '0004_issue20'
down_revision: Union[str, None] = '0003_issue26'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    # Written by hand, checked by tests/test_migrations.py (no autogenerate diff). Tubes stored
    # before this revision have no score and count as things (background false).
    with op.batch_alter_table('tubes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('objectness', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('objectness_features', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('background', sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('tubes', schema=None) as batch_op:
        batch_op.drop_column('background')
        batch_op.drop_column('objectness_features')
        batch_op.drop_column('objectness')
