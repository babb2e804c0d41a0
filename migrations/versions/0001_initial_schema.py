"""initial schema: every table of the contract, counters and bookkeeping

Revision ID: 0001
Revises:
Create Date: 2026-11-23 13:32:55.749136
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


HIST_ADD = """
CREATE FUNCTION vp_hist_add(a bigint[], b bigint[]) RETURNS bigint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    -- Element-wise sum of two histograms; a shorter (or empty) array counts as zeros.
    SELECT coalesce(array_agg(coalesce(x, 0) + coalesce(y, 0) ORDER BY i), '{}'::bigint[])
    FROM unnest(a, b) WITH ORDINALITY AS t(x, y, i)
$$
"""


def upgrade() -> None:
    op.execute("CREATE SEQUENCE counter_revision_seq")
    op.execute(HIST_ADD)
    op.create_table('aggregation_windows',
    sa.Column('period_type', sa.String(length=8), nullable=False),
    sa.Column('period_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('source_revision', sa.BigInteger(), nullable=True),
    sa.Column('computed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('failures', sa.Integer(), server_default='0', nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('last_error_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("period_type IN ('hourly', 'daily')", name=op.f('ck_aggregation_windows_period_type')),
    sa.PrimaryKeyConstraint('period_type', 'period_start', name=op.f('pk_aggregation_windows'))
    )
    op.create_table('ai_usage_daily_aggregates',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('organization_id', sa.String(length=255), nullable=True),
    sa.Column('total_cost', sa.Numeric(precision=24, scale=10), nullable=False),
    sa.Column('total_calls', sa.BigInteger(), nullable=False),
    sa.Column('total_input_tokens', sa.BigInteger(), nullable=False),
    sa.Column('total_cached_tokens', sa.BigInteger(), nullable=False),
    sa.Column('total_output_tokens', sa.BigInteger(), nullable=False),
    sa.Column('cache_hit_rate', sa.Float(), nullable=False),
    sa.Column('by_operation', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.Column('by_coach', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.Column('by_player', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.Column('computed_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ai_usage_daily_aggregates')),
    sa.UniqueConstraint('day', 'organization_id', name=op.f('uq_ai_usage_daily_aggregates_day_organization_id'), postgresql_nulls_not_distinct=True)
    )
    op.create_index('ix_ai_usage_daily_aggregates_organization_id_day', 'ai_usage_daily_aggregates', ['organization_id', 'day'], unique=False)
    op.create_table('ai_usage_log',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('organization_id', sa.String(length=255), nullable=False),
    sa.Column('coach_id', sa.String(length=255), nullable=True),
    sa.Column('player_id', sa.String(length=255), nullable=True),
    sa.Column('operation', sa.String(length=255), nullable=False),
    sa.Column('model', sa.String(length=255), nullable=False),
    sa.Column('input_tokens', sa.BigInteger(), nullable=False),
    sa.Column('cached_tokens', sa.BigInteger(), nullable=False),
    sa.Column('output_tokens', sa.BigInteger(), nullable=False),
    sa.Column('cost', sa.Numeric(precision=24, scale=10), nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ai_usage_log'))
    )
    op.create_index('ix_ai_usage_log_occurred_at', 'ai_usage_log', ['occurred_at'], unique=False)
    op.create_index('ix_ai_usage_log_organization_id_occurred_at', 'ai_usage_log', ['organization_id', 'occurred_at'], unique=False)
    op.create_table('artifacts',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('organization_id', sa.String(length=255), nullable=False),
    sa.Column('coach_id', sa.String(length=255), nullable=True),
    sa.Column('source_channel', sa.String(length=255), nullable=False),
    sa.Column('media_ref', sa.Text(), nullable=True),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('failed_stage', sa.String(length=32), nullable=True),
    sa.Column('error_code', sa.String(length=255), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('metadata', postgresql.JSONB(astext_type=sa.Text()), server_default='{"retryAttempt": 0}', nullable=False),
    sa.Column('requeue_count', sa.Integer(), server_default='0', nullable=False),
    sa.Column('active_retry_attempt', sa.Integer(), nullable=True),
    sa.Column('current_stage', sa.String(length=32), nullable=True),
    sa.Column('stage_task_id', sa.String(length=255), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_artifacts'))
    )
    op.create_index('ix_artifacts_organization_id', 'artifacts', ['organization_id'], unique=False)
    op.create_index('ix_artifacts_status_updated_at', 'artifacts', ['status', 'updated_at'], unique=False)
    op.create_table('event_counters',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('organization_id', sa.String(length=255), nullable=True),
    sa.Column('hour_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revision', sa.BigInteger(), server_default=sa.text("nextval('counter_revision_seq')"), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('n_artifact_received', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_artifact_status_changed', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_artifact_completed', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_artifact_failed', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_transcription_started', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_transcription_completed', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_transcription_failed', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_claims_extraction_started', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_claims_extracted', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_claims_extraction_failed', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_entity_resolution_started', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_entity_resolution_completed', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_entity_resolution_failed', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_entity_needs_disambiguation', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_draft_generation_started', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_drafts_generated', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_draft_generation_failed', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_draft_confirmed', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_draft_rejected', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_circuit_breaker_opened', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_circuit_breaker_closed', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_retry_initiated', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_retry_succeeded', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_retry_failed', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_budget_threshold_reached', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_budget_exceeded', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_rate_limit_hit', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('transcription_latency_sum', sa.Float(), server_default='0', nullable=False),
    sa.Column('transcription_latency_count', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('claims_extraction_latency_sum', sa.Float(), server_default='0', nullable=False),
    sa.Column('claims_extraction_latency_count', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('entity_resolution_latency_sum', sa.Float(), server_default='0', nullable=False),
    sa.Column('entity_resolution_latency_count', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('draft_generation_latency_sum', sa.Float(), server_default='0', nullable=False),
    sa.Column('draft_generation_latency_count', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('end_to_end_latency_sum', sa.Float(), server_default='0', nullable=False),
    sa.Column('end_to_end_latency_count', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('transcript_confidence_sum', sa.Float(), server_default='0', nullable=False),
    sa.Column('transcript_confidence_count', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('claim_confidence_sum', sa.Float(), server_default='0', nullable=False),
    sa.Column('claim_confidence_count', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('claims_total', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('entities_total', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('drafts_total', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('ai_cost_sum', sa.Numeric(precision=24, scale=10), server_default='0', nullable=False),
    sa.Column('end_to_end_histogram', postgresql.ARRAY(sa.BigInteger()), server_default=sa.text("'{}'::bigint[]"), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_event_counters')),
    sa.UniqueConstraint('organization_id', 'hour_start', name=op.f('uq_event_counters_organization_id_hour_start'), postgresql_nulls_not_distinct=True)
    )
    op.create_index('ix_event_counters_hour_start', 'event_counters', ['hour_start'], unique=False)
    op.create_table('metrics_snapshots',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('organization_id', sa.String(length=255), nullable=True),
    sa.Column('period_type', sa.String(length=8), nullable=False),
    sa.Column('period_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('period_end', sa.DateTime(timezone=True), nullable=False),
    sa.Column('computed_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('artifacts_received', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('artifacts_completed', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('artifacts_failed', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('avg_transcription_latency', sa.Float(), server_default='0', nullable=False),
    sa.Column('avg_claims_extraction_latency', sa.Float(), server_default='0', nullable=False),
    sa.Column('avg_entity_resolution_latency', sa.Float(), server_default='0', nullable=False),
    sa.Column('avg_draft_generation_latency', sa.Float(), server_default='0', nullable=False),
    sa.Column('avg_end_to_end_latency', sa.Float(), server_default='0', nullable=False),
    sa.Column('p95_end_to_end_latency', sa.Float(), server_default='0', nullable=False),
    sa.Column('avg_transcript_confidence', sa.Float(), server_default='0', nullable=False),
    sa.Column('avg_claim_confidence', sa.Float(), server_default='0', nullable=False),
    sa.Column('auto_resolution_rate', sa.Float(), server_default='0', nullable=False),
    sa.Column('disambiguation_rate', sa.Float(), server_default='0', nullable=False),
    sa.Column('transcription_failure_rate', sa.Float(), server_default='0', nullable=False),
    sa.Column('claims_extraction_failure_rate', sa.Float(), server_default='0', nullable=False),
    sa.Column('entity_resolution_failure_rate', sa.Float(), server_default='0', nullable=False),
    sa.Column('draft_generation_failure_rate', sa.Float(), server_default='0', nullable=False),
    sa.Column('overall_failure_rate', sa.Float(), server_default='0', nullable=False),
    sa.Column('total_claims_extracted', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('total_entities_resolved', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('total_drafts_generated', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('total_ai_cost', sa.Numeric(precision=24, scale=10), server_default='0', nullable=False),
    sa.Column('avg_cost_per_artifact', sa.Numeric(precision=24, scale=10), server_default='0', nullable=False),
    sa.Column('retries_initiated', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('retries_succeeded', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('retries_failed', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_artifact_received', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_artifact_status_changed', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_artifact_completed', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_artifact_failed', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_transcription_started', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_transcription_completed', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_transcription_failed', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_claims_extraction_started', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_claims_extracted', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_claims_extraction_failed', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_entity_resolution_started', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_entity_resolution_completed', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_entity_resolution_failed', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_entity_needs_disambiguation', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_draft_generation_started', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_drafts_generated', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_draft_generation_failed', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_draft_confirmed', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_draft_rejected', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_circuit_breaker_opened', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_circuit_breaker_closed', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_retry_initiated', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_retry_succeeded', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_retry_failed', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_budget_threshold_reached', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_budget_exceeded', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('n_rate_limit_hit', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('transcription_latency_sum', sa.Float(), server_default='0', nullable=False),
    sa.Column('transcription_latency_count', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('claims_extraction_latency_sum', sa.Float(), server_default='0', nullable=False),
    sa.Column('claims_extraction_latency_count', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('entity_resolution_latency_sum', sa.Float(), server_default='0', nullable=False),
    sa.Column('entity_resolution_latency_count', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('draft_generation_latency_sum', sa.Float(), server_default='0', nullable=False),
    sa.Column('draft_generation_latency_count', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('end_to_end_latency_sum', sa.Float(), server_default='0', nullable=False),
    sa.Column('end_to_end_latency_count', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('transcript_confidence_sum', sa.Float(), server_default='0', nullable=False),
    sa.Column('transcript_confidence_count', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('claim_confidence_sum', sa.Float(), server_default='0', nullable=False),
    sa.Column('claim_confidence_count', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('claims_total', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('entities_total', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('drafts_total', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('ai_cost_sum', sa.Numeric(precision=24, scale=10), server_default='0', nullable=False),
    sa.Column('end_to_end_histogram', postgresql.ARRAY(sa.BigInteger()), server_default=sa.text("'{}'::bigint[]"), nullable=False),
    sa.CheckConstraint("period_type IN ('hourly', 'daily')", name=op.f('ck_metrics_snapshots_period_type')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_metrics_snapshots')),
    sa.UniqueConstraint('organization_id', 'period_type', 'period_start', name=op.f('uq_metrics_snapshots_organization_id_period_type_period_start'), postgresql_nulls_not_distinct=True)
    )
    op.create_index('ix_metrics_snapshots_period_type_period_start', 'metrics_snapshots', ['period_type', 'period_start'], unique=False)
    op.create_table('organizations',
    sa.Column('id', sa.String(length=255), nullable=False),
    sa.Column('name', sa.String(length=10000), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_organizations'))
    )
    op.create_table('pipeline_events',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('event_type', sa.String(length=64), nullable=False),
    sa.Column('artifact_id', sa.UUID(), nullable=True),
    sa.Column('organization_id', sa.String(length=255), nullable=True),
    sa.Column('coach_id', sa.String(length=255), nullable=True),
    sa.Column('stage', sa.String(length=32), nullable=True),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('time_window', sa.String(length=13), nullable=False),
    sa.Column('duration_ms', sa.Float(), nullable=True),
    sa.Column('error_code', sa.String(length=255), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('metadata', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.Column('recorded_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_pipeline_events'))
    )
    op.create_index('ix_pipeline_events_artifact_id_occurred_at', 'pipeline_events', ['artifact_id', 'occurred_at'], unique=False)
    op.create_index('ix_pipeline_events_occurred_at', 'pipeline_events', ['occurred_at'], unique=False)
    op.create_table('users',
    sa.Column('id', sa.String(length=255), nullable=False),
    sa.Column('email', sa.String(length=10000), nullable=False),
    sa.Column('is_platform_staff', sa.Boolean(), server_default='false', nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users'))
    )
    op.create_table('claims',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('artifact_id', sa.UUID(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('confidence', sa.Float(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['artifact_id'], ['artifacts.id'], name=op.f('fk_claims_artifact_id_artifacts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_claims'))
    )
    op.create_index(op.f('ix_claims_artifact_id'), 'claims', ['artifact_id'], unique=False)
    op.create_table('entity_resolutions',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('artifact_id', sa.UUID(), nullable=False),
    sa.Column('mention', sa.Text(), nullable=False),
    sa.Column('resolved_entity_id', sa.String(length=255), nullable=True),
    sa.Column('needs_disambiguation', sa.Boolean(), server_default='false', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['artifact_id'], ['artifacts.id'], name=op.f('fk_entity_resolutions_artifact_id_artifacts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_entity_resolutions'))
    )
    op.create_index(op.f('ix_entity_resolutions_artifact_id'), 'entity_resolutions', ['artifact_id'], unique=False)
    op.create_table('insight_drafts',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('artifact_id', sa.UUID(), nullable=False),
    sa.Column('content', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=32), server_default='pending', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['artifact_id'], ['artifacts.id'], name=op.f('fk_insight_drafts_artifact_id_artifacts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_insight_drafts'))
    )
    op.create_index(op.f('ix_insight_drafts_artifact_id'), 'insight_drafts', ['artifact_id'], unique=False)
    op.create_table('retry_requests',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('request_id', sa.String(length=255), nullable=True),
    sa.Column('artifact_id', sa.UUID(), nullable=False),
    sa.Column('stage', sa.String(length=32), nullable=False),
    sa.Column('requested_by', sa.String(length=255), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('outcome', sa.String(length=16), server_default='in_flight', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['artifact_id'], ['artifacts.id'], name=op.f('fk_retry_requests_artifact_id_artifacts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_retry_requests')),
    sa.UniqueConstraint('request_id', name=op.f('uq_retry_requests_request_id'))
    )
    op.create_index(op.f('ix_retry_requests_artifact_id'), 'retry_requests', ['artifact_id'], unique=False)
    op.create_table('transcripts',
    sa.Column('id', sa.UUID(), nullable=False),
    sa.Column('artifact_id', sa.UUID(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('word_count', sa.Integer(), nullable=False),
    sa.Column('confidence', sa.Float(), nullable=False),
    sa.Column('duration_seconds', sa.Float(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['artifact_id'], ['artifacts.id'], name=op.f('fk_transcripts_artifact_id_artifacts'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_transcripts'))
    )
    op.create_index(op.f('ix_transcripts_artifact_id'), 'transcripts', ['artifact_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_transcripts_artifact_id'), table_name='transcripts')
    op.drop_table('transcripts')
    op.drop_index(op.f('ix_retry_requests_artifact_id'), table_name='retry_requests')
    op.drop_table('retry_requests')
    op.drop_index(op.f('ix_insight_drafts_artifact_id'), table_name='insight_drafts')
    op.drop_table('insight_drafts')
    op.drop_index(op.f('ix_entity_resolutions_artifact_id'), table_name='entity_resolutions')
    op.drop_table('entity_resolutions')
    op.drop_index(op.f('ix_claims_artifact_id'), table_name='claims')
    op.drop_table('claims')
    op.drop_table('users')
    op.drop_index('ix_pipeline_events_occurred_at', table_name='pipeline_events')
    op.drop_index('ix_pipeline_events_artifact_id_occurred_at', table_name='pipeline_events')
    op.drop_table('pipeline_events')
    op.drop_table('organizations')
    op.drop_index('ix_metrics_snapshots_period_type_period_start', table_name='metrics_snapshots')
    op.drop_table('metrics_snapshots')
    op.drop_index('ix_event_counters_hour_start', table_name='event_counters')
    op.drop_table('event_counters')
    op.drop_index('ix_artifacts_status_updated_at', table_name='artifacts')
    op.drop_index('ix_artifacts_organization_id', table_name='artifacts')
    op.drop_table('artifacts')
    op.drop_index('ix_ai_usage_log_organization_id_occurred_at', table_name='ai_usage_log')
    op.drop_index('ix_ai_usage_log_occurred_at', table_name='ai_usage_log')
    op.drop_table('ai_usage_log')
    op.drop_index('ix_ai_usage_daily_aggregates_organization_id_day', table_name='ai_usage_daily_aggregates')
    op.drop_table('ai_usage_daily_aggregates')
    op.drop_table('aggregation_windows')
    op.execute("DROP FUNCTION vp_hist_add(bigint[], bigint[])")
    op.execute("DROP SEQUENCE counter_revision_seq")
