"""Accounts and rooms: users, refresh tokens, rooms and their members.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def _time(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        _time("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("name", name="uq_users_name"),
    )
    op.create_table(
        "refresh_tokens",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("family", sa.String(32), nullable=False),
        _time("created_at"),
        _time("expires_at"),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.Column("replaced_by", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_refresh_tokens"),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name="fk_refresh_tokens_user_id_users",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_refresh_tokens_user_id", "refresh_tokens", ["user_id"])
    op.create_index("ix_refresh_tokens_family", "refresh_tokens", ["family"])
    op.create_table(
        "rooms",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("private", sa.Boolean(), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=True),
        _time("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_rooms"),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name="fk_rooms_created_by_users",
            ondelete="SET NULL",
        ),
    )
    op.create_table(
        "room_members",
        sa.Column("room_id", sa.String(32), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        _time("joined_at"),
        sa.PrimaryKeyConstraint("room_id", "user_id", name="pk_room_members"),
        sa.ForeignKeyConstraint(
            ["room_id"], ["rooms.id"], name="fk_room_members_room_id_rooms", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_room_members_user_id_users", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_room_members_user_id", "room_members", ["user_id"])


def downgrade() -> None:
    op.drop_table("room_members")
    op.drop_table("rooms")
    op.drop_index("ix_refresh_tokens_family", "refresh_tokens")
    op.drop_index("ix_refresh_tokens_user_id", "refresh_tokens")
    op.drop_table("refresh_tokens")
    op.drop_table("users")
