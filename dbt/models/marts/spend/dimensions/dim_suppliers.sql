-- Suppliers: contacts typed VENDOR, plus any other contact a spend document was posted against.
with

contacts as (
    select * from {{ ref('stg_sage__contacts') }}
),

final as (
    select
        contacts.company_id,
        contacts.contact_id as supplier_id,
        contacts.contact_name as supplier_name,
        contacts.contact_reference as reference,
        contacts.currency,
        contacts.tax_number,
        contacts.is_vendor,
        contacts.is_deleted,
        contacts.first_synced_at,
        contacts.last_changed_at
    from contacts
    -- a lookup per non-vendor contact on the line table's (company_id, contact_id) index, not a
    -- scan of every spend line
    where contacts.is_vendor
        or exists (
            select 1
            from {{ ref('int_spend_lines_signed') }} as spend_lines
            where spend_lines.company_id = contacts.company_id
                and spend_lines.contact_id = contacts.contact_id
        )
)

select * from final
