-- One row per ledger account (nominal code) per company, with the spend category its lines get,
-- including accounts known only from spend lines: int_nominal_accounts_categorised as analysts
-- see it (its columns are this mart's, listed in _dimensions__models.yml).
select * from {{ ref('int_nominal_accounts_categorised') }}
