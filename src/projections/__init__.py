"""Read-model projections: each turns events into rows of its own PostgreSQL schema."""

from crm.projections.complaints import ComplaintsProjection
from crm.projections.customers import CustomersProjection
from crm.projections.sales import SalesProjection

PROJECTIONS = {p.name: p for p in (CustomersProjection, SalesProjection, ComplaintsProjection)}
