import type { Core } from '../api/core';
export async function serveMcp(_core: Core): Promise<void> {}
