"""What pgward knows about built-in functions: read-only, writing, administrative, or server access."""

from __future__ import annotations

# Built-ins that read nothing outside their arguments and the catalogs, and write nothing. Functions
# that run SQL given as text (query_to_xml, ts_stat, …) or read a table named by a string
# (table_to_xml) are deliberately absent: they would step around the table scope.
SAFE_FUNCTIONS = frozenset(
    """
    abs acos age array_agg array_append array_cat array_dims array_fill array_length array_lower
    array_ndims array_position array_positions array_prepend array_remove array_replace array_to_json
    array_to_string array_upper ascii asin atan atan2 avg bit_and bit_length bit_or bool_and bool_or
    btrim cardinality cbrt ceil ceiling char_length character_length chr clock_timestamp coalesce
    col_description concat concat_ws convert_from convert_to corr cos cot count covar_pop covar_samp
    cume_dist current_database current_date current_query current_role current_schema current_schemas
    current_setting current_time current_timestamp current_user date date_bin date_part date_trunc
    decode degrees dense_rank div encode every exp extract factorial first_value floor format
    format_type gcd gen_random_uuid generate_series generate_subscripts get_bit get_byte greatest
    has_any_column_privilege has_column_privilege has_database_privilege has_function_privilege
    has_language_privilege has_schema_privilege has_sequence_privilege has_server_privilege
    has_table_privilege has_tablespace_privilege has_type_privilege initcap int2 int4 int8
    isfinite json_agg json_array_elements json_array_elements_text json_array_length json_build_array
    json_build_object json_each json_each_text json_extract_path json_extract_path_text json_object
    json_object_agg json_object_keys json_populate_record json_strip_nulls json_typeof jsonb_agg
    jsonb_array_elements jsonb_array_elements_text jsonb_array_length jsonb_build_array
    jsonb_build_object jsonb_each jsonb_each_text jsonb_extract_path jsonb_extract_path_text
    jsonb_insert jsonb_object jsonb_object_agg jsonb_object_keys jsonb_path_exists jsonb_path_match
    jsonb_path_query jsonb_path_query_array jsonb_path_query_first jsonb_pretty jsonb_set
    jsonb_strip_nulls jsonb_typeof justify_days justify_hours justify_interval lag last_value lcm lead
    least left length ln localtime localtimestamp log log10 lower lpad ltrim make_date make_interval
    make_time make_timestamp make_timestamptz max md5 min mod now nth_value ntile nullif num_nonnulls
    num_nulls numeric obj_description octet_length overlay percent_rank percentile_cont
    percentile_disc pi position power quote_ident quote_literal quote_nullable radians random rank
    regexp_count regexp_instr regexp_like regexp_match regexp_matches regexp_replace regexp_split_to_array
    regexp_split_to_table regexp_substr regr_avgx regr_avgy regr_count regr_intercept regr_r2
    regr_slope regr_sxx regr_sxy regr_syy repeat replace reverse right round row_number row_to_json
    rpad rtrim scale session_user setseed shobj_description sign sin split_part sqrt starts_with
    statement_timestamp stddev stddev_pop stddev_samp string_agg string_to_array string_to_table
    strpos substr substring sum tan text timeofday timezone to_char to_date to_hex to_json to_jsonb
    to_number to_regclass to_regnamespace to_regproc to_regprocedure to_regrole to_regtype
    to_timestamp transaction_timestamp translate trim trim_scale trunc unistr unnest upper user
    var_pop var_samp variance version width_bucket xmlagg acldefault aclexplode array_in
    pg_backend_pid pg_char_to_encoding pg_client_encoding pg_collation_is_visible
    pg_conversion_is_visible pg_describe_object pg_encoding_to_char pg_function_is_visible
    pg_get_constraintdef pg_get_expr pg_get_function_arguments pg_get_function_identity_arguments
    pg_get_function_result pg_get_functiondef pg_get_indexdef pg_get_keywords pg_get_partition_constraintdef
    pg_get_partkeydef pg_get_ruledef pg_get_serial_sequence pg_get_statisticsobjdef
    pg_get_statisticsobjdef_columns pg_get_statisticsobjdef_expressions pg_get_triggerdef
    pg_get_userbyid pg_get_viewdef pg_has_role pg_identify_object pg_identify_object_as_address
    pg_index_column_has_property pg_index_has_property pg_indexam_has_property pg_indexes_size
    pg_is_in_recovery pg_is_other_temp_schema pg_my_temp_schema pg_opclass_is_visible
    pg_operator_is_visible pg_opfamily_is_visible pg_postmaster_start_time pg_relation_filenode
    pg_relation_is_publishable pg_relation_size pg_sequence_last_value pg_sequence_parameters
    pg_size_bytes pg_size_pretty pg_statistics_obj_is_visible pg_table_is_visible pg_table_size
    pg_tablespace_location pg_total_relation_size pg_ts_config_is_visible pg_ts_dict_is_visible
    pg_ts_parser_is_visible pg_ts_template_is_visible pg_type_is_visible pg_typeof
    pg_get_function_arg_default pg_column_size pg_database_size pg_get_replica_identity_index
    pg_partition_root pg_partition_tree pg_partition_ancestors pg_options_to_table
    pg_get_object_address pg_column_compression pg_stat_get_numscans txid_current_snapshot
    pg_current_snapshot pg_snapshot_xmin pg_visible_in_snapshot inet_client_addr inet_server_addr
    inet_server_port inet_client_port pg_jit_available pg_get_wal_replay_pause_state
    """.split()
)

# Built-ins that change data (sequence values): a write, never allowed in a read-only scope.
WRITE_FUNCTIONS = frozenset(
    {"nextval", "setval", "lo_create", "lo_unlink", "lo_put", "lo_from_bytea", "pg_notify"}
)

# Built-ins that act on the server itself; only an unrestricted `admin` allow covers them.
ADMIN_FUNCTIONS = frozenset(
    """
    pg_cancel_backend pg_terminate_backend pg_reload_conf pg_rotate_logfile pg_switch_wal
    pg_create_restore_point pg_promote pg_backup_start pg_backup_stop pg_start_backup pg_stop_backup
    pg_create_physical_replication_slot pg_create_logical_replication_slot pg_drop_replication_slot
    pg_copy_physical_replication_slot pg_copy_logical_replication_slot pg_replication_slot_advance
    pg_logical_emit_message pg_stat_reset pg_stat_reset_shared pg_stat_reset_single_table_counters
    pg_stat_reset_single_function_counters pg_stat_reset_slru pg_stat_reset_replication_slot
    pg_import_system_collations pg_wal_replay_pause pg_wal_replay_resume pg_log_backend_memory_contexts
    pg_replication_origin_create pg_replication_origin_drop pg_replication_origin_advance
    pg_replication_origin_session_setup pg_replication_origin_xact_setup pg_advisory_lock
    pg_advisory_xact_lock pg_advisory_unlock_all pg_export_snapshot
    """.split()
)

# Built-ins that reach the server's file system, programs or other servers (guardrail
# no_server_file_access), and built-ins that run SQL given as text or read a table named in a string,
# which would step around the table scope (always refused).
SERVER_ACCESS_FUNCTIONS = frozenset(
    """
    pg_read_file pg_read_binary_file pg_ls_dir pg_stat_file lo_import lo_export pg_ls_logdir
    pg_ls_waldir pg_ls_tmpdir pg_ls_archive_statusdir pg_ls_logicalsnapdir pg_ls_logicalmapdir
    pg_ls_replslotdir pg_file_write pg_file_rename pg_file_unlink pg_file_sync pg_logdir_ls
    pg_current_logfile
    """.split()
)
SERVER_ACCESS_PREFIXES = ("dblink",)
SQL_TEXT_FUNCTIONS = frozenset(
    """
    query_to_xml query_to_xmlschema query_to_xml_and_xmlschema cursor_to_xml cursor_to_xmlschema
    table_to_xml table_to_xmlschema table_to_xml_and_xmlschema schema_to_xml schema_to_xmlschema
    schema_to_xml_and_xmlschema database_to_xml database_to_xmlschema database_to_xml_and_xmlschema
    ts_stat
    """.split()
)

# Settings a client may never change through set_config or SET: who the session is, and pgward's
# own row-level-security context.
ROLE_SETTINGS = frozenset({"role", "session_authorization"})
READ_ONLY_SETTINGS = frozenset({"default_transaction_read_only", "transaction_read_only"})


def is_server_access(name: str) -> bool:
    return name in SERVER_ACCESS_FUNCTIONS or name.startswith(SERVER_ACCESS_PREFIXES)


def is_builtin(name: str) -> bool:
    """A name pgward knows as a pg_catalog function (so an unqualified call resolves there first)."""
    return (
        name in SAFE_FUNCTIONS
        or name in WRITE_FUNCTIONS
        or name in ADMIN_FUNCTIONS
        or name in SQL_TEXT_FUNCTIONS
        or name == "set_config"
        or is_server_access(name)
    )


# The tables and views of pg_catalog (PostgreSQL 15 to 18). pg_catalog is searched before the
# search_path unless the path names it later, so an unqualified name from this list resolves there.
CATALOG_RELATIONS = frozenset(
    """
    pg_aggregate pg_aios pg_am pg_amop pg_amproc pg_attrdef pg_attribute pg_auth_members pg_authid
    pg_available_extension_versions pg_available_extensions pg_backend_memory_contexts pg_cast
    pg_class pg_collation pg_config pg_constraint pg_conversion pg_cursors pg_database
    pg_db_role_setting pg_default_acl pg_depend pg_description pg_enum pg_event_trigger pg_extension
    pg_file_settings pg_foreign_data_wrapper pg_foreign_server pg_foreign_table pg_group
    pg_hba_file_rules pg_ident_file_mappings pg_index pg_indexes pg_inherits pg_init_privs
    pg_language pg_largeobject pg_largeobject_metadata pg_locks pg_matviews pg_namespace pg_opclass
    pg_operator pg_opfamily pg_parameter_acl pg_partitioned_table pg_policies pg_policy
    pg_prepared_statements pg_prepared_xacts pg_proc pg_publication pg_publication_namespace
    pg_publication_rel pg_publication_tables pg_range pg_replication_origin
    pg_replication_origin_status pg_replication_slots pg_rewrite pg_roles pg_rules pg_seclabel
    pg_seclabels pg_sequence pg_sequences pg_settings pg_shadow pg_shdepend pg_shdescription
    pg_shmem_allocations pg_shmem_allocations_numa pg_shseclabel pg_stat_activity
    pg_stat_all_indexes pg_stat_all_tables pg_stat_archiver pg_stat_bgwriter pg_stat_checkpointer
    pg_stat_database pg_stat_database_conflicts pg_stat_gssapi pg_stat_io pg_stat_progress_analyze
    pg_stat_progress_basebackup pg_stat_progress_cluster pg_stat_progress_copy
    pg_stat_progress_create_index pg_stat_progress_vacuum pg_stat_recovery_prefetch
    pg_stat_replication pg_stat_replication_slots pg_stat_slru pg_stat_ssl pg_stat_subscription
    pg_stat_subscription_stats pg_stat_sys_indexes pg_stat_sys_tables pg_stat_user_functions
    pg_stat_user_indexes pg_stat_user_tables pg_stat_wal pg_stat_wal_receiver
    pg_stat_xact_all_tables pg_stat_xact_sys_tables pg_stat_xact_user_functions
    pg_stat_xact_user_tables pg_statio_all_indexes pg_statio_all_sequences pg_statio_all_tables
    pg_statio_sys_indexes pg_statio_sys_sequences pg_statio_sys_tables pg_statio_user_indexes
    pg_statio_user_sequences pg_statio_user_tables pg_statistic pg_statistic_ext
    pg_statistic_ext_data pg_stats pg_stats_ext pg_stats_ext_exprs pg_subscription
    pg_subscription_rel pg_tables pg_tablespace pg_timezone_abbrevs pg_timezone_names pg_transform
    pg_trigger pg_ts_config pg_ts_config_map pg_ts_dict pg_ts_parser pg_ts_template pg_type pg_user
    pg_user_mapping pg_user_mappings pg_views pg_wait_events
    """.split()
)
