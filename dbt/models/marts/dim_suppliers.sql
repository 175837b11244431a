-- Suppliers: contacts typed VENDOR, plus any other contact a spend document was posted against.
with

contacts as (
    select * from {{ ref('stg_sage__contacts') }}
),

spend_lines as (
    select * from {{ ref('int_spend_lines_unioned') }}
),

contacts_with_spend as (
    select distinct
        company_id,
        contact_id
    from spend_lines
    where contact_id is not null
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
    left join contacts_with_spend
        on contacts.company_id = contacts_with_spend.company_id
        and contacts.contact_id = contacts_with_spend.contact_id
    where contacts.is_vendor or contacts_with_spend.contact_id is not null
)

select * from final
